"""https:// links through an https:// proxy: TLS to the proxy, CONNECT, then a second TLS session
inside the first (http.client cannot nest TLS, so the inner one runs on memory BIOs)."""

from __future__ import annotations

import io
import socket
import ssl

from lora_trainer.download.errors import NetworkError


class TunnelSocket:
    """The little of the socket API http.client uses, over an SSLObject inside an outer TLS socket."""

    def __init__(self, outer: ssl.SSLSocket, ctx: ssl.SSLContext, host: str):
        self.outer = outer
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self._in, self._out, server_hostname=host)
        self._pump(self.tls.do_handshake)

    def _flush(self) -> None:
        data = self._out.read()
        if data:
            self.outer.sendall(data)

    def _pump(self, op, *args):
        """Run an SSLObject call, moving bytes to and from the outer socket until it completes."""
        while True:
            try:
                result = op(*args)
                self._flush()
                return result
            except ssl.SSLWantReadError:
                self._flush()
                data = self.outer.recv(65536)
                if not data:  # the tunnel closed
                    if op == self.tls.read:
                        return 0 if len(args) == 2 else b""
                    raise ConnectionResetError("the proxy closed the tunnel") from None
                self._in.write(data)
            except ssl.SSLZeroReturnError:  # the origin closed its TLS session
                return 0 if len(args) == 2 else b""

    def sendall(self, data) -> None:
        view = memoryview(data)
        while view:
            n = self._pump(self.tls.write, view)
            view = view[n:]

    def recv_into(self, buf, nbytes: int = 0) -> int:
        return self._pump(self.tls.read, nbytes or len(buf), buf)

    def makefile(self, mode: str = "rb", buffering: int = -1):
        return io.BufferedReader(_Raw(self), buffer_size=65536)

    def settimeout(self, value) -> None:
        self.outer.settimeout(value)

    def setsockopt(self, *args) -> None:
        self.outer.setsockopt(*args)

    def shutdown(self, how) -> None:
        self.outer.shutdown(how)

    def close(self) -> None:
        self.outer.close()


class _Raw(io.RawIOBase):
    def __init__(self, sock: TunnelSocket):
        self.sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        return self.sock.recv_into(b)


def open_tunnel(proxy_host: str, proxy_port: int, host: str, port: int, ctx: ssl.SSLContext,
                proxy_auth: str | None, connect_timeout: float, read_timeout: float) -> TunnelSocket:
    """TLS to the proxy, `CONNECT host:port`, then TLS to the origin inside it."""
    raw = socket.create_connection((proxy_host, proxy_port), connect_timeout)
    raw.settimeout(read_timeout)
    outer = ctx.wrap_socket(raw, server_hostname=proxy_host)
    head = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    if proxy_auth:
        head += f"Proxy-Authorization: {proxy_auth}\r\n"
    outer.sendall((head + "\r\n").encode("latin-1"))
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = outer.recv(4096)
        if not chunk:
            break
        answer += chunk
    status = answer.split(b"\r\n", 1)[0].decode("latin-1", "replace")
    if len(status.split()) < 2 or status.split()[1] != "200":
        outer.close()
        raise NetworkError(f"the proxy refused the tunnel to {host}:{port}: {status or 'no answer'}")
    return TunnelSocket(outer, ctx, host)
