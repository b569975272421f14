"""Host ICE candidate addresses for voxgate's own peer connections.

aioice gathers host candidates on every interface address and skips
127.0.0.1 (``aioice.ice.get_host_addresses``); voxgate must gather only on
``webrtc.host_addresses`` (loopback included). aioice looks the function up
at call time inside ``Connection.gather_candidates``, so it is wrapped once
by a function that returns the addresses set in a context variable, and
falls back to aioice's own answer everywhere else. The variable is set only
around voxgate's ``setLocalDescription`` (and the tasks it spawns inherit
the context), so other peer connections in the process are unaffected.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
from collections.abc import Iterator, Sequence

import aioice.ice

__all__ = ["host_addresses", "install"]

_ADDRESSES: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "voxgate_host_addresses", default=None
)
_original = aioice.ice.get_host_addresses


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    chosen = _ADDRESSES.get()
    if chosen is None:
        return _original(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    out = []
    for addr in chosen:
        version = ipaddress.ip_address(addr).version
        if (version == 4 and use_ipv4) or (version == 6 and use_ipv6):
            out.append(addr)
    return out


def install() -> None:
    """Wrap ``aioice.ice.get_host_addresses`` (idempotent)."""
    if aioice.ice.get_host_addresses is not _get_host_addresses:
        aioice.ice.get_host_addresses = _get_host_addresses


@contextlib.contextmanager
def host_addresses(addresses: Sequence[str]) -> Iterator[None]:
    """Within this block (and tasks created in it), gather host candidates
    on ``addresses`` only; an empty sequence leaves aioice's default."""
    install()
    if not addresses:
        yield
        return
    for addr in addresses:
        ipaddress.ip_address(addr)  # ValueError on a bad setting, early
    token = _ADDRESSES.set(tuple(addresses))
    try:
        yield
    finally:
        _ADDRESSES.reset(token)
