"""A project's pins, parsed and normalized: web origins (RFC 6454) as
browsers send them in the ``Origin`` header (``scheme://host[:port]``,
lowercase, without the scheme's default port), model names, and client
networks (CIDR). Pure functions, no I/O."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

__all__ = ["normalize_origin", "parse_origins", "parse_models", "parse_networks", "origin_allowed",
           "parse_ip", "is_loopback", "MAX_ORIGINS"]

MAX_ORIGINS = 50
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(text: str) -> str:
    """``"HTTPS://App.Example.com:443"`` → ``"https://app.example.com"``.

    Raises:
        ValueError: not an http(s) origin (a path, query, user info or
            wildcard is not allowed), or a bad port.
    """
    raw = text.strip()
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"{text!r} is not an origin: use http://host or https://host[:port]")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"{text!r} is not an origin: scheme, host and port only, no path")
    host = (parts.hostname or "").lower()
    if not host or "*" in host:
        raise ValueError(f"{text!r} is not an origin: a host name is required (no wildcards)")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{text!r} has an invalid port") from exc
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def parse_origins(texts: list[str]) -> tuple[str, ...]:
    """Normalize an allowlist, dropping duplicates, keeping order.

    Raises:
        ValueError: an entry is not an origin, or more than ``MAX_ORIGINS``.
    """
    out: list[str] = []
    for text in texts:
        origin = normalize_origin(text)
        if origin not in out:
            out.append(origin)
    if len(out) > MAX_ORIGINS:
        raise ValueError(f"at most {MAX_ORIGINS} allowed origins, got {len(out)}")
    return tuple(out)


def parse_models(texts: list[str]) -> tuple[str, ...]:
    """Model names, stripped, duplicates dropped.

    Raises:
        ValueError: an empty or over-long (> 100 characters) name, or more
            than ``MAX_ORIGINS``.
    """
    out: list[str] = []
    for text in texts:
        name = text.strip()
        if not name or len(name) > 100 or any(c.isspace() for c in name):
            raise ValueError(f"{text!r} is not a model name")
        if name not in out:
            out.append(name)
    if len(out) > MAX_ORIGINS:
        raise ValueError(f"at most {MAX_ORIGINS} allowed models, got {len(out)}")
    return tuple(out)


def parse_networks(texts: list[str]) -> tuple[str, ...]:
    """Client networks as CIDRs (``203.0.113.7`` → ``203.0.113.7/32``; host
    bits are dropped: ``10.1.2.3/8`` → ``10.0.0.0/8``).

    Raises:
        ValueError: not an IPv4/IPv6 address or network, or more than
            ``MAX_ORIGINS``.
    """
    out: list[str] = []
    for text in texts:
        try:
            network = str(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{text!r} is not an IP address or CIDR network") from exc
        if network not in out:
            out.append(network)
    if len(out) > MAX_ORIGINS:
        raise ValueError(f"at most {MAX_ORIGINS} allowed networks, got {len(out)}")
    return tuple(out)


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a request with ``Origin: origin`` may use a key of a project
    whose allowlist is ``allowed`` (normalized origins). An empty allowlist
    allows every origin; a request without ``Origin`` (not from a browser
    page) is allowed; ``Origin: null`` (sandboxed frames, files) is allowed
    only without an allowlist."""
    if not allowed or origin is None:
        return True
    try:
        return normalize_origin(origin) in allowed
    except ValueError:
        return False


def parse_ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address as a peer or a resolver reports it (a zone ``%eth0``
    dropped; an IPv4-mapped IPv6 address taken as the IPv4 address it
    maps); None when it is not one."""
    try:
        ip = ipaddress.ip_address((text or "").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_loopback(host: str) -> bool:
    """True for a listen address that only the local host can reach:
    ``localhost``, ``127.0.0.0/8``, ``::1``. Not for ``0.0.0.0``, ``::``
    or ``""`` (every interface)."""
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    ip = parse_ip(host)
    return ip is not None and ip.is_loopback
