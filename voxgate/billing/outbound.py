"""Requests to URLs customers choose (their alert webhooks), kept off the
operator's own network (SSRF, OWASP's "Server-Side Request Forgery
Prevention"): https only, and never to an address that is not globally
routable: loopback, private (RFC 1918, RFC 4193), link-local (and with it
the cloud metadata address 169.254.169.254), shared (100.64/10), multicast,
reserved or unspecified.

Checked twice: when the URL is set (``check_url``: scheme, host, every
address the name resolves to) and at delivery against the address actually
connected to (``PublicResolver`` for host names, so a name that resolves
elsewhere later, DNS rebinding included, cannot reach inside; ``check_url``
again for IP literals, which aiohttp does not resolve). ``dev_mode`` lifts
both (http and local receivers, for development).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from voxgate.errors import UnsafeUrl
from voxgate.models.origins import parse_ip

__all__ = ["UnsafeUrl", "check_url", "is_public_address", "PublicResolver", "client_session"]





def is_public_address(address: str) -> bool:
    """Whether ``address`` (IPv4/IPv6, an IPv4-mapped IPv6 taken as IPv4) is
    globally routable unicast."""
    ip = parse_ip(address)
    return ip is not None and ip.is_global and not ip.is_multicast


async def check_url(url: object, *, dev_mode: bool = False, resolve: bool = True) -> str:
    """Validate a customer's webhook URL; returns it. With ``resolve`` false
    (at delivery, where ``PublicResolver`` checks what a host name resolves
    to) only an IP-literal host is checked, without a DNS lookup.

    Raises:
        UnsafeUrl (400): not an https URL (http allowed in ``dev_mode``), user
            info in it, no host, a host that does not resolve, or one that
            resolves to an address that is not public (allowed in ``dev_mode``).
    """
    if not isinstance(url, str) or len(url) > 2048:
        raise UnsafeUrl("'url' must be an https URL", param="url")
    parts = urlsplit(url.strip())
    schemes = ("https", "http") if dev_mode else ("https",)
    if parts.scheme.lower() not in schemes:
        raise UnsafeUrl("'url' must be an https URL" + ("" if dev_mode else
                        " (http is allowed only in development mode)"), param="url")
    if "@" in parts.netloc or not parts.hostname:
        raise UnsafeUrl("'url' must name a host, without user info", param="url")
    if dev_mode:
        return url
    if not resolve:
        literal = parse_ip(parts.hostname)
        if literal is not None and not is_public_address(str(literal)):
            raise UnsafeUrl(f"the webhook address {parts.hostname} is not public: voxgate sends "
                            "webhooks to public addresses only", param="url")
        return url
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError as exc:
        raise UnsafeUrl("'url' has an invalid port", param="url") from exc
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UnsafeUrl(f"the webhook host {parts.hostname!r} does not resolve",
                        param="url") from exc
    addresses = {str(info[4][0]) for info in infos}
    private = sorted(a for a in addresses if not is_public_address(a))
    if private or not addresses:
        raise UnsafeUrl(f"the webhook host {parts.hostname!r} resolves to a loopback, private, "
                        f"link-local or reserved address ({', '.join(private)}): voxgate sends "
                        "webhooks to public addresses only", param="url")
    return url


class PublicResolver(AbstractResolver):
    """aiohttp's resolver, keeping only public addresses (``OSError`` when
    none is left): the connection goes only where it was checked to go."""

    def __init__(self) -> None:
        self._resolver = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self._resolver.resolve(host, port, family)
        public = [r for r in found if is_public_address(r["host"])]
        if not public:
            raise OSError(f"{host} resolves to no public address: not sending there")
        return public

    async def close(self) -> None:
        await self._resolver.close()


def client_session(*, dev_mode: bool, **kw: Any) -> aiohttp.ClientSession:
    """An ``aiohttp.ClientSession`` for customer URLs: no redirects followed
    (pass ``allow_redirects=False`` per request too), connections only to
    public addresses unless ``dev_mode``."""
    connector = aiohttp.TCPConnector(resolver=None if dev_mode else PublicResolver())
    return aiohttp.ClientSession(connector=connector, **kw)
