"""HTTP plumbing on the stdlib: connections (direct, http(s) proxy, socks5/socks5h), redirects, errors.

Why not requests/httpx: the core stays stdlib-only inside the WebUI's pinned venv, and we need
control they hide: connect to the address we checked, keep one keep-alive connection per worker,
re-check every redirect hop, and read the X-Linked-Etag of an intermediate hop (HuggingFace).
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import http.client
import json
import os
import re
import ssl
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import unquote, urljoin, urlsplit

from lora_trainer.download.errors import (
    AuthRequiredError,
    BadRequestError,
    LinkExpiredError,
    MalformedResponseError,
    NetworkError,
)
from lora_trainer.download.options import DownloadOptions
from lora_trainer.download.safety import check_host_for_proxy, check_url, connect_checked

REDIRECTS = (301, 302, 303, 307, 308)
SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")


class RetryableHTTPError(NetworkError):
    """429/5xx and friends; `retry_after` seconds when the server said so."""

    def __init__(self, message: str, status: int = 0, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass
class Opened:
    """A response after redirects, with what the redirect hops told us."""

    conn: http.client.HTTPConnection
    resp: http.client.HTTPResponse
    url: str  # final URL (a signed CDN link, often)
    linked_sha256: str | None = None
    linked_size: int | None = None
    hops: list[str] = field(default_factory=list)
    open_ended: bool = False  # asked for `bytes=N-`: the body runs to the end of the file
    checked: bool = False  # identity already compared with the file we download
    head_speed: float = 0.0  # bytes/s of the first read (the probe's): a slow start opens all connections at once
    wait: float = 0.0  # seconds from the request to the answer's headers (the probe's): a round trip, or more

    def header(self, name: str) -> str | None:
        return self.resp.getheader(name)


class Slot:
    """One worker's keep-alive connection, reused while the origin stays the same."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.conn: http.client.HTTPConnection | None = None
        self.absolute = False

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.close()
        self.conn, self.key = None, None


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Client:
    """Opens GET requests for one download with its headers, tokens, proxy and safety rules."""

    def __init__(self, opts: DownloadOptions, headers: dict[str, str] | None = None):
        self.opts = opts
        self.headers = {**opts.headers, **(headers or {})}
        self._ssl: ssl.SSLContext | None = None

    @property
    def _ctx(self) -> ssl.SSLContext:
        """TLS context, built on first https use (loading the CA store costs ~0.1 s)."""
        if self._ssl is None:
            ctx = ssl.create_default_context()
            if self.opts.ca_file:
                ctx.load_verify_locations(self.opts.ca_file)
            if not self.opts.verify_tls:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._ssl = ctx
        return self._ssl

    # -- connections -------------------------------------------------------------------------
    def _proxy_for(self, scheme: str, host: str) -> str | None:
        if self.opts.proxy is not None:
            return self.opts.proxy or None  # "" means: no proxy, ignore the environment
        if os.name != "nt" and sys.platform != "darwin" and not any(k[-6:].lower() == "_proxy" for k in os.environ):
            return None  # what getproxies() finds here: only *_proxy variables (no system settings to read)
        import urllib.request  # only for the environment's proxy settings

        proxies = urllib.request.getproxies()
        if not proxies or urllib.request.proxy_bypass(host):
            return None
        return proxies.get(scheme) or proxies.get("all")

    def _connect(self, scheme: str, host: str, port: int) -> tuple[http.client.HTTPConnection, bool]:
        opts = self.opts
        https = scheme == "https"
        proxy = self._proxy_for(scheme, host)
        timeout = opts.read_timeout
        if not proxy:
            conn = (http.client.HTTPSConnection(host, port, timeout=timeout, context=self._ctx) if https
                    else http.client.HTTPConnection(host, port, timeout=timeout))
            conn._create_connection = lambda addr, _t=None, _s=None: connect_checked(  # type: ignore[attr-defined]
                addr, opts.connect_timeout, opts.block_private, opts.read_timeout)
            return conn, False
        check_host_for_proxy(host, opts.block_private)
        p = urlsplit(proxy if "://" in proxy else "http://" + proxy)
        pscheme = p.scheme.lower()
        auth = None
        if p.username:
            raw = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
            auth = "Basic " + base64.b64encode(raw).decode()
        if pscheme in ("socks5", "socks5h", "socks4", "socks4a"):
            try:
                import socks  # PySocks, only needed for SOCKS proxies
            except ImportError as exc:
                raise BadRequestError("SOCKS proxies need the PySocks package: pip install PySocks") from exc
            ptype = socks.SOCKS5 if pscheme.startswith("socks5") else socks.SOCKS4
            rdns = pscheme in ("socks5h", "socks4a")
            conn = (http.client.HTTPSConnection(host, port, timeout=timeout, context=self._ctx) if https
                    else http.client.HTTPConnection(host, port, timeout=timeout))

            def via_socks(addr, _t=None, _s=None):
                sock = socks.create_connection(
                    addr, timeout=opts.connect_timeout, proxy_type=ptype, proxy_addr=p.hostname,
                    proxy_port=p.port or 1080, proxy_rdns=rdns,
                    proxy_username=unquote(p.username) if p.username else None,
                    proxy_password=unquote(p.password) if p.password else None)
                sock.settimeout(opts.read_timeout)
                return sock

            conn._create_connection = via_socks  # type: ignore[attr-defined]
            return conn, False
        if pscheme not in ("http", "https"):
            raise BadRequestError(f"proxy '{proxy}': use http://, https://, socks5:// or socks5h://")
        pport = p.port or (443 if pscheme == "https" else 8080)
        if https and pscheme == "https":  # TLS to the proxy, and TLS to the origin inside it
            from lora_trainer.download.tlstunnel import open_tunnel

            conn = http.client.HTTPConnection(host, port, timeout=timeout)
            conn._create_connection = lambda addr, _t=None, _s=None: open_tunnel(  # type: ignore[attr-defined]
                p.hostname, pport, host, port, self._ctx, auth, opts.connect_timeout, opts.read_timeout)
            return conn, False
        if https:
            conn = http.client.HTTPSConnection(p.hostname, pport, timeout=timeout, context=self._ctx)
            conn.set_tunnel(host, port, headers={"Proxy-Authorization": auth} if auth else None)
            absolute = False
        else:
            conn = (http.client.HTTPSConnection(p.hostname, pport, timeout=timeout, context=self._ctx)
                    if pscheme == "https" else http.client.HTTPConnection(p.hostname, pport, timeout=timeout))
            absolute = True
        conn._create_connection = lambda addr, _t=None, _s=None: connect_checked(  # type: ignore[attr-defined]
            addr, opts.connect_timeout, False, opts.read_timeout)
        if auth and absolute:
            self._proxy_auth = auth
        return conn, absolute

    # -- requests ----------------------------------------------------------------------------
    def _headers_for(self, host: str, first_host: str, extra: dict[str, str]) -> dict[str, str]:
        h = {"User-Agent": self.opts.user_agent, "Accept-Encoding": "identity", "Accept": "*/*"}
        for k, v in self.headers.items():
            # like curl: credentials do not follow a redirect to another host
            if host != first_host and k.lower() in ("authorization", "cookie"):
                continue
            h[k] = v
        if not any(k.lower() == "authorization" for k in h):
            token = self.opts.token_for(host)
            if token:
                h["Authorization"] = f"Bearer {token}"
        h.update(extra)
        return h

    def open(self, url: str, extra: dict[str, str] | None = None, slot: Slot | None = None) -> Opened:
        """GET url following redirects (each hop re-checked); returns the first non-redirect response."""
        slot = slot or Slot()
        first_host = (urlsplit(url).hostname or "").lower()
        linked_sha, linked_size, hops = None, None, []
        for _ in range(self.opts.max_redirects + 1):
            check_url(url)
            parts = urlsplit(url)
            scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
            port = parts.port or (443 if scheme == "https" else 80)
            headers = self._headers_for(host, first_host, extra or {})
            resp = self._request(slot, scheme, host, port, url, parts, headers)
            tag = (resp.getheader("X-Linked-Etag") or "").strip().strip('"').removeprefix("W/").strip('"')
            if SHA256_RE.match(tag):
                linked_sha = tag.lower()
            size = resp.getheader("X-Linked-Size")
            if size and size.isdigit():
                linked_size = int(size)
            location = resp.getheader("Location")
            if resp.status in REDIRECTS and location:
                drain(resp, slot)
                hops.append(url)
                url = urljoin(url, location)
                continue
            return Opened(slot.conn, resp, url, linked_sha, linked_size, hops)  # type: ignore[arg-type]
        raise NetworkError(f"too many redirects (more than {self.opts.max_redirects}) starting at {hops[0]}")

    def _request(self, slot: Slot, scheme: str, host: str, port: int, url: str, parts, headers):
        key = (scheme, host, port)
        for attempt in (0, 1):
            reused = slot.conn is not None and slot.key == key
            if not reused:
                slot.close()
                slot.conn, slot.absolute = self._connect(scheme, host, port)
                slot.key = key
            elif slot.conn.sock is not None:  # type: ignore[union-attr]
                # the last body's reads set the shorter stall timeout; headers may take longer
                slot.conn.sock.settimeout(self.opts.read_timeout)  # type: ignore[union-attr]
            target = url if slot.absolute else (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            h = dict(headers)
            if slot.absolute and getattr(self, "_proxy_auth", None):
                h["Proxy-Authorization"] = self._proxy_auth
            try:
                slot.conn.request("GET", target, headers=h)  # type: ignore[union-attr]
                return slot.conn.getresponse()  # type: ignore[union-attr]
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                slot.close()
                if not reused or attempt:  # a fresh connection failed: a real error
                    raise
            except (http.client.BadStatusLine, http.client.LineTooLong, http.client.UnknownProtocol) as exc:
                slot.close()
                raise MalformedResponseError(
                    f"{host} sent a garbage answer instead of an HTTP response ({type(exc).__name__}: "
                    f"{str(exc).strip()[:120]!r})") from exc
            except Exception:
                slot.close()
                raise
        raise AssertionError("unreachable")


def drain(resp: http.client.HTTPResponse, slot: Slot, limit: int = 65536) -> bytes:
    """Read a small body so the connection can be reused; close it when the body is large."""
    length = resp.getheader("Content-Length")
    if resp.chunked or (length and length.isdigit() and int(length) <= limit):
        try:
            data = resp.read(limit + 1)
            if len(data) <= limit and resp.isclosed():
                if resp.will_close:
                    slot.close()
                return data
        except (OSError, http.client.HTTPException):
            pass
    else:
        try:
            data = resp.read(min(limit, 4096))
        except (OSError, http.client.HTTPException):
            data = b""
        slot.close()
        return data
    slot.close()
    return b""


def error_message_from_body(body: bytes) -> str:
    """A short server message from a JSON/text error body, for our own message."""
    text = body[:2048].decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
        if isinstance(data, dict):
            for key in ("error", "message", "detail", "msg"):
                if isinstance(data.get(key), str):
                    return data[key][:200]
    except ValueError:
        pass
    if "<" in text[:100]:
        return ""
    return text[:200]


def raise_for_status(opened: Opened, opts: DownloadOptions, slot: Slot, original_url: str) -> None:
    """Turn a non-2xx answer into the error that tells the user what to do."""
    resp = opened.resp
    status = resp.status
    if 200 <= status < 300:
        return
    body = drain(resp, slot, limit=16384)
    said = error_message_from_body(body)
    said = f" (server said: {said})" if said else ""
    host = (urlsplit(original_url).hostname or "").lower()
    if status == 429 or status >= 500 or status == 408:
        raise RetryableHTTPError(f"server busy or failing: HTTP {status}{said}", status,
                                 parse_retry_after(resp.getheader("Retry-After")))
    if status in (401, 403) and opts.is_civitai(host):
        if opts.token_for(host):
            raise AuthRequiredError(
                f"Civitai refused the API token (HTTP {status}){said}: check the token, or that your "
                "account may download this file (early access, login-only)")
        raise AuthRequiredError(
            f"this Civitai file needs an API token (HTTP {status}){said}: create one at "
            "civitai.com/user/account and pass --token, set 'Civitai API token' in the settings, "
            "or set CIVITAI_TOKEN")
    if status in (401, 403) and opts.is_hf(host):
        raise AuthRequiredError(
            f"HuggingFace refused access (HTTP {status}){said}: the repository is gated or private; "
            "accept its license on the model page and pass --token, set 'HuggingFace token' in the "
            "settings, or set HF_TOKEN")
    if status in (401, 403, 404, 410):
        what = {401: "needs a login", 403: "has expired or needs a login", 404: "points to nothing",
                410: "has been removed"}[status]
        raise LinkExpiredError(f"the link {what} (HTTP {status}){said}: paste a fresh direct link")
    if status == 416:
        raise RetryableHTTPError(f"the server refused the byte range (HTTP 416){said}", status)
    raise LinkExpiredError(f"unexpected answer HTTP {status}{said}: check the link")
