"""SDP offers of WebRTC calls: validation and candidate rewriting. Pure
functions, no sockets (RFC 8866 SDP, RFC 8839 ICE SDP attributes).

``check_offer`` runs before admission, so an offer voxgate cannot answer is
refused with a 400 and no session is opened.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiortc.sdp import SessionDescription

from voxgate.errors import InvalidSdp

__all__ = ["Offer", "check_offer", "announce_address", "InvalidSdp", "MAX_SDP_BYTES"]

MAX_SDP_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Offer:
    """What voxgate needs from a client's offer.

    Attributes:
        sdp: the offer text, CRLF line endings.
        candidate_types: the ``typ`` of every candidate in the offer
            (``host``, ``srflx``, ``prflx``, ``relay``), in order.
        has_data_channel: an ``m=application`` section (the ``oai-events``
            data channel) is present.
    """

    sdp: str
    candidate_types: tuple[str, ...]
    has_data_channel: bool

    @property
    def relay_only(self) -> bool:
        """Every candidate is a relay candidate (or there is none, as when a
        client with ``iceTransportPolicy: "relay"`` could not allocate)."""
        return all(t == "relay" for t in self.candidate_types)


def check_offer(text: str) -> Offer:
    """Validate an SDP offer.

    Raises:
        InvalidSdp: empty, too large, not SDP (``v=0`` first), no active
            ``m=audio`` section, no Opus in it (``unsupported_codec``), or a
            media section without ICE credentials or a DTLS fingerprint.
    """
    if not text or not text.strip():
        raise InvalidSdp("the SDP offer is empty", param="sdp")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SDP_BYTES:
        raise InvalidSdp(f"the SDP offer exceeds {MAX_SDP_BYTES} bytes", param="sdp")
    lines = [line.strip() for line in text.strip().splitlines()]
    if lines[0] != "v=0":
        raise InvalidSdp("invalid SDP offer: the first line must be 'v=0'", param="sdp")
    sdp = "\r\n".join(lines) + "\r\n"
    try:
        desc = SessionDescription.parse(sdp)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the client's
        raise InvalidSdp(f"invalid SDP offer: {type(exc).__name__}: {exc}", param="sdp") from exc
    audio = [m for m in desc.media if m.kind == "audio" and m.port != 0]
    if not audio:
        raise InvalidSdp("the SDP offer has no audio m-line", code="no_audio", param="sdp")
    if not any(c.mimeType.lower() == "audio/opus" for m in audio for c in m.rtp.codecs):
        raise InvalidSdp("the SDP offer's audio has no Opus codec (audio/opus 48000/2 required)",
                         code="unsupported_codec", param="sdp")
    for m in desc.media:
        if m.port == 0:
            continue
        if m.ice is None or not m.ice.usernameFragment or not m.ice.password:
            raise InvalidSdp(f"the SDP offer's {m.kind} section has no ICE ufrag/pwd",
                             param="sdp")
        # aiortc leaves ``dtls`` None when the section has no a=setup /
        # a=fingerprint at all (RFC 8842 section 5 requires both)
        if m.dtls is None or not m.dtls.fingerprints:
            raise InvalidSdp(f"the SDP offer's {m.kind} section has no DTLS fingerprint",
                             param="sdp")
    types = tuple(c.type for m in desc.media for c in m.ice_candidates)
    return Offer(sdp=sdp, candidate_types=types,
                 has_data_channel=any(m.kind == "application" for m in desc.media))


def announce_address(sdp: str, public_address: str) -> str:
    """Replace the address of every ``typ host`` candidate (and of the
    ``c=`` lines) with ``public_address``: the address a 1:1 NAT maps
    voxgate's host address to. Ports are kept (1:1 NAT keeps them)."""
    if not public_address:
        return sdp
    out = []
    for line in sdp.split("\r\n"):
        if line.startswith("a=candidate:"):
            parts = line.split(" ")
            # candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type>
            if len(parts) >= 8 and parts[6] == "typ" and parts[7] == "host":
                parts[4] = public_address
                line = " ".join(parts)
        elif line.startswith("c=IN IP4 ") or line.startswith("c=IN IP6 "):
            family = "IP6" if ":" in public_address else "IP4"
            line = f"c=IN {family} {public_address}"
        out.append(line)
    return "\r\n".join(out)
