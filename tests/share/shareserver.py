"""Real HTTP servers on 127.0.0.1 for the sharing tests: a static file server that counts requests,
and one that answers Civitai's documented JSON for by-hash look-ups."""

from __future__ import annotations

import json
import socket
import threading
from collections import Counter
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer


class _Quiet:
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


class _Static(_Quiet, SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.hits[self.path.split("?")[0]] += 1  # type: ignore[attr-defined]
        super().do_GET()


class _Gated(_Static):
    """Holds every GET of a .safetensors until `server.gate` (a threading.Event) is set."""

    def do_GET(self) -> None:
        if self.path.split("?")[0].endswith(".safetensors"):
            self.server.asked += 1  # type: ignore[attr-defined]
            self.server.arrived.set()  # type: ignore[attr-defined]
            self.server.gate.wait(60)  # type: ignore[attr-defined]
        super().do_GET()


def gated_server(folder: str) -> Served:
    """A static server whose model files wait for `srv.httpd.gate.set()`; `srv.httpd.arrived` says one was
    asked for, `srv.httpd.asked` counts such requests (held ones included)."""
    return Served(folder, _Gated, gate=threading.Event(), arrived=threading.Event(), asked=0)


class Served:
    """`with Served(folder) as s:` serves folder at s.url; s.hits counts GETs per path."""

    def __init__(self, folder: str, handler: type = _Static, **attrs):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=folder)
                                         if issubclass(handler, _Static) else handler)
        self.httpd.hits = Counter()  # type: ignore[attr-defined]
        for k, v in attrs.items():
            setattr(self.httpd, k, v)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def hits(self) -> Counter:
        return self.httpd.hits  # type: ignore[attr-defined]

    def downloads(self, suffix: str = ".safetensors") -> int:
        return sum(n for p, n in self.hits.items() if p.endswith(suffix))

    def __enter__(self) -> Served:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Civitai(_Quiet, BaseHTTPRequestHandler):
    """`/api/v1/model-versions/by-hash/<hash>`, `/api/v1/models/<id>`, `/img/<n>.png` (data from server.db)."""

    def do_GET(self) -> None:
        db = self.server.db  # type: ignore[attr-defined]
        self.server.hits[self.path] += 1  # type: ignore[attr-defined]
        path = self.path.split("?")[0]
        if path.startswith("/api/v1/model-versions/by-hash/"):
            h = path.rsplit("/", 1)[1].lower()
            version = db["by_hash"].get(h)
            return self._json(version, 200) if version else self._json({"error": "Model not found"}, 404)
        if path.startswith("/api/v1/models/"):
            model = db["models"].get(path.rsplit("/", 1)[1])
            return self._json(model, 200) if model else self._json({"error": "Not found"}, 404)
        if path in db["images"]:
            body = db["images"][path]
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self._json({"error": "Not found"}, 404)

    def _json(self, data, status: int) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def civitai_server(db: dict) -> Served:
    return Served("", _Civitai, db=db)


def closed_port_url() -> str:
    """A link to a port nobody listens on (what 'offline' looks like to a client)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
