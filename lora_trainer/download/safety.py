"""URL and address rules: only http(s), and optionally no loopback/private/link-local targets.

The address check runs after DNS resolution and we connect to the address we checked, so a name
that resolves differently a second later (DNS rebinding) cannot slip through; redirects are
re-checked hop by hop by the HTTP layer.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from lora_trainer.download.errors import BadRequestError, UnsafeError


def check_url(url: str) -> None:
    """Refuse anything but an absolute http(s) URL with a host (no file://, no local paths)."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https"):
        shown = parts.scheme or "a local path"
        raise UnsafeError(f"refused '{url}': only http:// and https:// links can be downloaded, not {shown}")
    if not parts.hostname:
        raise BadRequestError(f"'{url}' has no host name: paste the full link starting with https://")


def is_blocked_ip(ip: str) -> bool:
    """Loopback, private, link-local, multicast, reserved or unspecified addresses (v4 and v6)."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return bool(addr.is_loopback or addr.is_private or addr.is_link_local or addr.is_multicast
                or addr.is_reserved or addr.is_unspecified)


def resolve_checked(host: str, port: int, block_private: bool) -> list[tuple]:
    """getaddrinfo results for host; with block_private, refuse when any address is internal."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        from lora_trainer.download.errors import NetworkError

        raise NetworkError(f"cannot resolve host '{host}': {exc.strerror}; check the link and your network") from exc
    if block_private:
        for info in infos:
            if is_blocked_ip(info[4][0]):
                raise UnsafeError(
                    f"refused '{host}': it resolves to the internal address {info[4][0]} (loopback, private "
                    "or link-local), which this server is not allowed to reach")
    return infos


def check_host_for_proxy(host: str, block_private: bool) -> None:
    """With a proxy the proxy connects; still refuse IP literals and names that resolve internally here."""
    if not block_private:
        return
    try:
        ipaddress.ip_address(host)
        is_ip = True
    except ValueError:
        is_ip = False
    if is_ip:
        if is_blocked_ip(host):
            raise UnsafeError(f"refused '{host}': internal addresses are not allowed on this server")
        return
    if host.lower() in ("localhost",) or host.lower().endswith(".localhost"):
        raise UnsafeError(f"refused '{host}': internal addresses are not allowed on this server")
    try:
        infos = socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)
    except OSError:
        return  # only the proxy can resolve it (socks5h); it decides
    for info in infos:
        if is_blocked_ip(info[4][0]):
            raise UnsafeError(f"refused '{host}': it resolves to the internal address {info[4][0]}")


def connect_checked(address: tuple[str, int], timeout: float, block_private: bool,
                    read_timeout: float) -> socket.socket:
    """Connect to the first reachable checked address of (host, port)."""
    host, port = address
    last: OSError | None = None
    for family, type_, proto, _name, sockaddr in resolve_checked(host, port, block_private):
        sock = socket.socket(family, type_, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            sock.settimeout(read_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            last = exc
            sock.close()
    raise last or OSError(f"cannot connect to {host}:{port}")
