"""voxgate's patches over aioice: host candidate addresses, and the call's watch.

Host ICE candidate addresses for voxgate's own peer connections:
aioice gathers host candidates on every interface address and skips
127.0.0.1 (``aioice.ice.get_host_addresses``); voxgate must gather only on
``webrtc.host_addresses`` (loopback included). aioice looks the function up
at call time inside ``Connection.gather_candidates``, so it is wrapped once
by a function that returns the addresses set in a context variable, and
falls back to aioice's own answer everywhere else. The variable is set only
around voxgate's ``setLocalDescription`` (and the tasks it spawns inherit
the context), so other peer connections in the process are unaffected.

The call's watch over its ICE connection reaches into aioice's internals
too, and only here: the connection of a peer connection
(:func:`ice_connection`), its candidates and nominated pair, lost consent
told from a hang-up (:func:`watch_consent`) and every datagram the client
sends (:func:`watch_datagrams`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import aioice.ice

__all__ = ["host_addresses", "install", "ice_connection", "candidate_types", "nominated_pair",
           "watch_consent", "watch_datagrams"]

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


def ice_connection(pc: Any) -> Any:
    """The aioice ``Connection`` of an aiortc ``RTCPeerConnection`` (bundled:
    one for the call), or None before there is one."""
    for transceiver in pc.getTransceivers():
        return transceiver.receiver.transport.transport._connection
    sctp = pc.sctp
    return sctp.transport.transport._connection if sctp is not None else None


def candidate_types(pc: Any, *, local: bool) -> set[str]:
    """The types (``host``, ``srflx``, ``prflx``, ``relay``) of the local or
    remote candidates of ``pc``'s ICE connection (empty when unknown)."""
    try:
        conn = ice_connection(pc)
        if conn is None:
            return set()
        return {c.type for c in (conn.local_candidates if local else conn.remote_candidates)}
    except AttributeError:
        return set()


def nominated_pair(pc: Any) -> tuple[str, str] | None:
    """(local, remote) candidate types of the nominated pair (aioice
    ``Connection._nominated``), None when unknown."""
    try:
        conn = ice_connection(pc)
        pair = conn._nominated.get(1) if conn is not None else None
    except AttributeError:
        pair = None
    if pair is None:
        return None
    return pair.local_candidate.type, pair.remote_candidate.type


def watch_consent(pc: Any, on_lost: Callable[[], None]) -> None:
    """Tell lost consent from a hang-up: aiortc reports both as ``closed``
    (no ``disconnected`` state); when consent expires (RFC 7675 §5.1)
    aioice's consent task itself closes the connection, so its ``close`` is
    wrapped to call ``on_lost()`` when that task is the caller."""
    try:
        conn = ice_connection(pc)
        consent_task = conn._query_consent_task
        close = conn.close
    except AttributeError:
        return

    async def closing() -> None:
        if consent_task is not None and asyncio.current_task() is consent_task:
            on_lost()
        await close()

    conn.close = closing


def watch_datagrams(pc: Any, on_datagram: Callable[[Any], bool]) -> bool:
    """Call ``on_datagram(data)`` for every datagram ``pc``'s ICE connection
    receives (connectivity and consent checks, DTLS, SRTP/SRTCP, SCTP;
    relayed ones through TURN too), before aioice does; a True return means
    it was consumed (aioice does not see it). Wraps each of the connection's
    ``StunProtocol.datagram_received``. False when there is no connection
    to watch."""
    protocols = getattr(ice_connection(pc), "_protocols", None)
    if not protocols:
        return False

    def wrap(received: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
        def seen(data: Any, addr: Any) -> None:
            if not on_datagram(data):
                received(data, addr)
        return seen

    for protocol in protocols:
        protocol.datagram_received = wrap(protocol.datagram_received)
    return True
