"""Tiny real proxies for the tests: SOCKS5 (no auth or user/password) and an HTTP forward proxy."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


def _pipe(a: socket.socket, b: socket.socket) -> None:
    def copy(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    t = threading.Thread(target=copy, args=(b, a), daemon=True)
    t.start()
    copy(a, b)
    t.join()
    a.close()
    b.close()


class _Base:
    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.port = self.sock.getsockname()[1]
        self.seen: list = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle_safe, args=(conn,), daemon=True).start()

    def _handle_safe(self, conn: socket.socket) -> None:
        try:
            self.handle(conn)
        except OSError:
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


class Socks5Proxy(_Base):
    """Records (address type, host, port) of each CONNECT; ATYP 3 means the name was resolved here."""

    def __init__(self, user: str | None = None, password: str | None = None):
        self.user, self.password = user, password
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        _ver, n = _recv_exact(conn, 2)
        methods = _recv_exact(conn, n)
        if self.user:
            if 2 not in methods:
                conn.sendall(b"\x05\xff")
                return conn.close()
            conn.sendall(b"\x05\x02")
            _v, ulen = _recv_exact(conn, 2)
            user = _recv_exact(conn, ulen).decode()
            (plen,) = _recv_exact(conn, 1)
            password = _recv_exact(conn, plen).decode()
            ok = (user, password) == (self.user, self.password)
            conn.sendall(b"\x01\x00" if ok else b"\x01\x01")
            if not ok:
                return conn.close()
        else:
            conn.sendall(b"\x05\x00")
        _ver, _cmd, _rsv, atyp = _recv_exact(conn, 4)
        if atyp == 1:
            host = socket.inet_ntoa(_recv_exact(conn, 4))
        elif atyp == 3:
            (ln,) = _recv_exact(conn, 1)
            host = _recv_exact(conn, ln).decode()
        else:
            host = socket.inet_ntop(socket.AF_INET6, _recv_exact(conn, 16))
        (port,) = struct.unpack(">H", _recv_exact(conn, 2))
        self.seen.append((atyp, host, port))
        upstream = socket.create_connection((host, port))
        conn.sendall(b"\x05\x00\x00\x01" + socket.inet_aton("0.0.0.0") + b"\x00\x00")
        _pipe(conn, upstream)


class HttpProxy(_Base):
    """Forward proxy: absolute-form requests and CONNECT; records request lines and Proxy-Authorization.
    With tls=(cert, key) clients talk TLS to the proxy itself (an https:// proxy)."""

    def __init__(self, tls: tuple[str, str] | None = None):
        self.ctx = None
        if tls:
            import ssl

            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(*tls)
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        if self.ctx is not None:
            conn = self.ctx.wrap_socket(conn, server_side=True)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                return conn.close()
            head += chunk
        text = head.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        lines = text.split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        auth = next((ln.split(":", 1)[1].strip() for ln in lines[1:]
                     if ln.lower().startswith("proxy-authorization:")), None)
        self.seen.append((method, target, auth))
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            return _pipe(conn, upstream)
        from urllib.parse import urlsplit

        u = urlsplit(target)
        upstream = socket.create_connection((u.hostname, u.port or 80))
        upstream.sendall(head)
        _pipe(conn, upstream)
