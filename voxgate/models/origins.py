"""Web origins (RFC 6454) as browsers send them in the ``Origin`` header:
``scheme://host[:port]``, lowercase, without the scheme's default port. Pure
functions, no I/O."""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["normalize_origin", "parse_origins", "origin_allowed", "MAX_ORIGINS"]

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
