"""WebRTC calls, as OpenAI's Realtime WebRTC interface serves them
(https://platform.openai.com/docs/guides/realtime-webrtc), split along the
spec's seams:

- ``calls``: the HTTP handlers (offer → answer, hang-up, call record, ICE
  servers, sideband attach) and ``setup(app)``;
- ``call``: one call, a shell around the relay core (``voxgate.proxy.relay``):
  the peer connection, the upstream WebSocket, the ``oai-events`` data
  channel and sidebands, the call's lifecycle, its ICE/DTLS watch;
- ``ice``: voxgate's patches over aioice (host addresses, consent, liveness);
- ``sdp``: offer checks and the answer's public address;
- ``media``: inbound audio chunks and the outgoing audio track;
- ``opus``, ``rtp_in``, ``rtp_pump``: Opus, the browser's RTP decoded
  inline, the process's outgoing RTP pump;
- ``turn``: STUN/TURN servers and TURN REST credentials.

Browsers post the offer as OpenAI's guide does, before ICE gathering: an
offer without candidates is answered with voxgate's own, and the client's
addresses are learnt from its checks (peer-reflexive). CORS for these routes
is ``voxgate.proxy.cors``.

A call is a thin shell around the same relay core as a WebSocket session:
the offer is validated first, then ``Gateway.admit`` (transport ``webrtc``);
voxgate answers with its own aiortc peer connection and opens the provider's
WebSocket with ``UpstreamConnector``. The ``oai-events`` data channel carries
JSON events both ways; the browser's Opus audio is bridged to
``input_audio_buffer.append`` and the provider's audio deltas to the outgoing
track (they are not sent on the channel). Hang-up, peer close, data channel
close, upstream close, ICE failure or timeout, lost consent and a client that
has sent nothing for ``consent_grace_s`` (closed tab, crash, network gone)
end the call; ``Gateway.finish`` runs once, on every path. Connect latency
runs from the offer to the call being ready both ways (ICE, DTLS, data
channel, upstream ``session.created``), not to the client's first audio.
"""

from voxgate.proxy.webrtc.call import CALL_PREFIX, CALLS, Call, call_id_of, session_id_of
from voxgate.proxy.webrtc.calls import setup, sideband

__all__ = ["setup", "Call", "CALLS", "call_id_of", "session_id_of", "CALL_PREFIX", "sideband"]
