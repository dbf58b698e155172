"""A real threaded HTTP/1.1 server on 127.0.0.1 for the downloader tests and bench.

Per-connection throttling and fault injection (status bursts, drops, stalls, wrong Content-Length,
file change mid-download, no Range support, HTML login pages, redirect chains to expiring signed
URLs). Absolute-form request targets are accepted so it can sit behind a forwarding proxy.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Resource:
    data: bytes = b""
    path: str | None = None  # serve from a file with sendfile (bench)
    etag: str | None = "auto"
    last_modified: str | None = "Sun, 01 Nov 2026 10:00:00 GMT"
    ranges: bool = True
    rate: float | None = None  # bytes/s per connection
    disposition: str | None = None
    content_type: str = "application/octet-stream"
    statuses: list[int] = field(default_factory=list)  # answered first, one per request
    retry_after: str | None = None
    drops: list[int] = field(default_factory=list)  # per request: close after n body bytes
    stalls: list[int] = field(default_factory=list)  # per request: after n body bytes go silent
    stall_seconds: float | None = 3.0  # None: silent until the server shuts down (the socket stays open)
    # broken answers to ranged requests starting at or after malformed_from: "inverted" (206, empty, an
    # impossible Content-Range), "empty" (206 with no body for the asked range), "shifted" (another range
    # than asked), "length" (Content-Length differs from the range), "garbage" (not an HTTP status line),
    # "ignored" (200 and the whole file)
    malformed: str | None = None
    malformed_from: int = 0
    malformed_times: int | None = None  # how many such answers; None: every one
    length_delta: int = 0  # lie in Content-Length by this much
    change_after: int | None = None  # after this many body bytes served in total, switch to new_data
    new_data: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    served: int = 0
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def size(self) -> int:
        return os.path.getsize(self.path) if self.path else len(self.data)

    def current_etag(self) -> str | None:
        if self.etag != "auto":
            return self.etag
        return '"' + hashlib.md5(self.data[:4096] + str(len(self.data)).encode()).hexdigest() + '"'


@dataclass
class Redirect:
    location: str
    status: int = 302
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Signed:
    """`/path` → 302 to `/cdn/<target>?expires=T`; the CDN answers 403 once T has passed."""

    target: str
    ttl: float = 1.0
    issued: int = 0
    expired: Raw | None = None  # what an expired URL answers (default: 403 XML like S3)


@dataclass
class Raw:
    status: int
    body: bytes
    content_type: str = "text/html"
    headers: dict[str, str] = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args):  # noqa: D102 - quiet
        pass

    def do_GET(self):  # noqa: N802
        parts = urlsplit(self.path)
        route = self.server.routes.get(parts.path)
        self.server.log.append((parts.path, self.headers.get("Range"), dict(self.headers)))
        if parts.path.startswith("/cdn/"):
            target = parts.path[len("/cdn"):]
            expires = float(parse_qs(parts.query).get("expires", ["0"])[0])
            signer = next((r for r in self.server.routes.values() if isinstance(r, Signed) and r.target == target),
                          None)
            if time.time() > expires:
                return self._raw(signer.expired if signer and signer.expired else Raw(
                    403, b"<Error><Code>AccessDenied</Code>Request has expired</Error>", "application/xml"))
            route = self.server.routes.get(target)
        if route is None:
            return self._raw(Raw(404, b"not found", "text/plain"))
        if isinstance(route, Redirect):
            return self._raw(Raw(route.status, b"", "text/plain", {"Location": route.location, **route.headers}))
        if isinstance(route, Signed):
            route.issued += 1
            loc = f"/cdn{route.target}?expires={time.time() + route.ttl:.3f}&sig={route.issued}"
            return self._raw(Raw(302, b"", "text/plain", {"Location": loc}))
        if isinstance(route, Raw):
            return self._raw(route)
        if callable(route):
            return route(self)
        return self._resource(route)

    def _raw(self, raw: Raw) -> None:
        self.send_response(raw.status)
        self.send_header("Content-Type", raw.content_type)
        self.send_header("Content-Length", str(len(raw.body)))
        for k, v in raw.headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(raw.body)

    def _resource(self, res: Resource) -> None:
        with res.lock:
            res.requests += 1
            status = res.statuses.pop(0) if res.statuses else None
            drop = res.drops.pop(0) if res.drops else None
            stall = res.stalls.pop(0) if res.stalls else None
            if res.change_after is not None and res.served >= res.change_after:
                res.data, res.change_after = res.new_data, None
            data = res.data
        if status:
            headers = {"Retry-After": res.retry_after} if res.retry_after and status == 429 else {}
            return self._raw(Raw(status, b'{"error":"busy"}', "application/json", headers))
        size = res.size
        start, end, partial = 0, size, False
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        etag = res.current_etag()
        if rng and res.ranges and (not if_range or if_range in (etag, res.last_modified)):
            spec = rng.split("=", 1)[1]
            a, b = spec.split("-", 1)
            start = int(a)
            end = min(size, int(b) + 1) if b else size
            if start >= size:
                return self._raw(Raw(416, b"", "text/plain", {"Content-Range": f"bytes */{size}"}))
            partial = True
            if res.malformed and start >= res.malformed_from and res.malformed_times != 0:
                with res.lock:
                    if res.malformed_times is not None:
                        res.malformed_times -= 1
                return self._malformed(res, data, start, end, size)
        self.send_response(206 if partial else 200)
        self.send_header("Content-Type", res.content_type)
        self.send_header("Content-Length", str(end - start + res.length_delta))
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        if res.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if etag:
            self.send_header("ETag", etag)
        if res.last_modified:
            self.send_header("Last-Modified", res.last_modified)
        if res.disposition:
            self.send_header("Content-Disposition", res.disposition)
        for k, v in res.headers.items():
            self.send_header(k, v)
        self.end_headers()
        self._body(res, data, start, end, drop, stall)
        if res.length_delta > 0:  # announced more than we send: hang up like a broken server
            self.close_connection = True

    def _malformed(self, res: Resource, data: bytes, start: int, end: int, size: int) -> None:
        kind = res.malformed
        self.close_connection = True
        if kind == "garbage":
            self.wfile.write(b"SPAM 2OO maybe\r\nContent-Length: 3\r\n\r\nxyz")
            return
        if kind == "ignored":  # the whole file with 200, as if Range had not been sent
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            if res.current_etag():
                self.send_header("ETag", res.current_etag())
            self.end_headers()
            self.wfile.write(data)
            return
        first, last, body = start, end - 1, data[start:end]
        if kind == "inverted":
            first, last, body = start + 1, start, b""
        elif kind == "empty":
            body = b""
        elif kind == "shifted":
            first = min(start + 1000, last)
            body = data[first:end]
        length = len(body) if kind != "length" else max(0, len(body) - 1000)
        self.send_response(206)
        self.send_header("Content-Type", res.content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        if res.current_etag():
            self.send_header("ETag", res.current_etag())
        self.end_headers()
        self.wfile.write(body[:length])

    def _body(self, res: Resource, data: bytes, start: int, end: int, drop, stall) -> None:
        limit = end - start
        if drop is not None:
            limit = min(limit, drop)
        if stall is not None:
            limit = min(limit, stall)
        if res.path and res.rate is None and drop is None and stall is None:
            with open(res.path, "rb") as f:
                self.wfile.flush()
                offset, left = start, limit
                while left > 0:
                    n = os.sendfile(self.connection.fileno(), f.fileno(), offset, left)
                    if n == 0:
                        break
                    offset += n
                    left -= n
            res.served += limit
        else:
            view = memoryview(data) if not res.path else None
            f = open(res.path, "rb") if res.path else None  # noqa: SIM115
            chunk = 16384 if res.rate else 1 << 20
            t0 = time.monotonic()
            sent = 0
            try:
                while sent < limit:
                    n = min(chunk, limit - sent)
                    if f is not None:
                        f.seek(start + sent)
                        piece = f.read(n)
                    else:
                        piece = view[start + sent:start + sent + n]
                    self.wfile.write(piece)
                    sent += n
                    with res.lock:
                        res.served += n
                    if res.rate:
                        ahead = sent / res.rate - (time.monotonic() - t0)
                        if ahead > 0:
                            time.sleep(ahead)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
                return
            finally:
                if f is not None:
                    f.close()
        if stall is not None:
            self.wfile.flush()
            self.server.closing.wait(res.stall_seconds)
        if drop is not None or stall is not None:
            self.close_connection = True
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def handle_error(self, request, client_address):  # clients hang up on purpose in these tests
        pass


class TestServer:
    """`with TestServer() as srv: srv.routes['/f'] = Resource(data=...); url = srv.url('/f')`."""

    __test__ = False

    def __init__(self, host: str = "127.0.0.1", tls: tuple[str, str] | None = None) -> None:
        self.host = host
        self.scheme = "https" if tls else "http"
        self.httpd = _Server((host, 0), _Handler)
        if tls:  # (certfile, keyfile)
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.httpd.routes = {}
        self.httpd.log = []
        self.httpd.closing = threading.Event()  # ends the silence of stalled answers
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def routes(self) -> dict:
        return self.httpd.routes

    @property
    def log(self) -> list:
        return self.httpd.log

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{path}"

    def __enter__(self) -> TestServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()
