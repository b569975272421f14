"""One load-test session over WebRTC, as OpenAI's WebRTC flow does it
(https://platform.openai.com/docs/guides/realtime-webrtc): mint an
ephemeral key (``POST /v1/realtime/client_secrets`` with the project key),
post the SDP offer to ``POST /v1/realtime/calls`` with it, apply the
answer; events on the ``oai-events`` data channel, audio as Opus media.

The client's audio track plays the plan's audio in real time (20 ms Opus
frames of the clip, encoded once per process, so the load generator spends
its CPU on RTP rather than on encoding) and then ends; the echo upstream's
deltas come back as voxgate's outgoing track, whose RTP packets are timed
as they arrive and not decoded (:class:`ArrivalTiming`), so one load
generator keeps up with many calls. The session ends with
``POST /v1/realtime/calls/{id}/hangup`` (or, for ``vanish``, by closing the
peer connection with no hang-up).

``turn_failure``: the offer carries only ``relay`` candidates (the client's
host candidates re-typed as relay, at a loopback port nobody listens on) and
the client never applies the answer, so no connectivity check ever reaches
voxgate: ICE times out (``webrtc.ice_timeout_s``) with a relay-only offer,
which voxgate must record as ``turn_failure``.

Client-side latency: ``connect_ms`` is offer start → ``session.created`` on
the data channel. Audio round trips are not measured (Opus does not carry
the chunk tags); ``underruns`` counts, on voxgate's outgoing track, gaps of
more than :data:`UNDERRUN_GAP_MS` between consecutive packets' arrival,
missing sequence numbers, and packets arriving more than
:data:`UNDERRUN_GAP_MS` later than their RTP timestamp implies (against the
earliest-arriving packet), plus frames the client's own sender sent late.
"""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import av
import orjson
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from voxgate.loadtest.audio import Clip
from voxgate.loadtest.plan import SessionPlan
from voxgate.loadtest.result import ADMITTED, FAILED, REFUSED, SessionResult, error_of
from voxgate.loadtest.ws_client import REFUSAL_STATUSES
from voxgate.proxy.webrtc import opus as rtp_audio
from voxgate.proxy.webrtc import rtp_pump
from voxgate.proxy.webrtc.media import FRAME_GRID
from voxgate.proxy.ws_relay import SESSION_ID_HEADER

__all__ = ["run_webrtc_session", "ClipTrack", "ArrivalTiming", "UNDERRUN_GAP_MS", "relay_only"]

FRAME_BYTES = 960  # 20 ms of PCM16 24 kHz
UNDERRUN_GAP_MS = 60.0
"""A gap between received frames longer than this counts as an underrun, in ms."""
_SESSION = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}


class ClipTrack(MediaStreamTrack):
    """``ms`` of the clip (its Opus frames, looped) in real-time 20 ms
    packets, then the track ends. Frames fall due on the process's 20 ms
    frame grid (``voxgate.proxy.webrtc.media.FrameGrid``) and are sent by the
    process's RTP pump (``voxgate.proxy.webrtc.rtp_pump``), as voxgate sends its
    own, so the sessions of a load test go out in one pass per tick;
    ``late`` counts frames sent more than 20 ms after they were due."""

    kind = "audio"

    def __init__(self, opus: list[bytes], ms: int) -> None:
        super().__init__()
        self.opus = opus
        self.frames = ms // 20
        self.index = 0
        self.tick0: int | None = None  # the grid tick of frame 0
        self.late = 0
        self._late_pending = False
        self.finished = asyncio.Event()

    async def recv(self) -> av.Packet:  # type: ignore[override]
        now = time.monotonic()
        due = self.due_tick(now)
        if self.readyState != "live":
            raise MediaStreamError
        if due * 0.02 > now:
            await FRAME_GRID.wait(due)
        return rtp_audio.opus_packet(*self.next_frame())

    # -- the frame source of ``voxgate.proxy.webrtc.rtp_pump`` (which sends it) ------

    def due_tick(self, now: float) -> int:
        """The grid tick of the next frame; past the last frame the track
        ends (``finished``)."""
        if self.tick0 is None:
            self.tick0 = FRAME_GRID.tick_at(now)
        if self.index >= self.frames:
            self.finished.set()
            self.stop()
        due = self.tick0 + self.index
        if now - due * 0.02 > 0.02:
            self._late_pending = True
        return due

    def next_frame(self) -> tuple[bytes, int]:
        if self._late_pending:
            self.late += 1
            self._late_pending = False
        index = self.index
        self.index += 1
        return self.opus[index % len(self.opus)], index


class ArrivalTiming:
    """Stands in for an ``RTCRtpReceiver``'s jitter buffer and decoder queue
    (the seams ``voxgate.proxy.webrtc.rtp_in.decode_inline`` uses) and times each
    Opus RTP packet as it arrives, decoding nothing. Counts, in
    :attr:`underruns`: arrival gaps > :data:`UNDERRUN_GAP_MS` between
    consecutive packets; sequence numbers skipped; packets whose arrival,
    minus their RTP timestamp (48 kHz clock) converted to s, is more than
    :data:`UNDERRUN_GAP_MS` above the smallest such offset seen (the
    earliest-arriving packet: a late frame). :attr:`audio_ms` is 20 ms per
    packet longer than the canned silence packet (``rtp_audio.SILENCE_PACKET``)."""

    def __init__(self, clock=time.perf_counter) -> None:
        self._clock = clock
        self._last_arrival: float | None = None
        self._next_seq: int | None = None
        self._min_offset: float | None = None
        self._ts0: int | None = None  # the first packet's RTP timestamp
        self.gaps = self.missing = self.late = 0
        self.audio_ms = 0.0

    @property
    def underruns(self) -> int:
        return self.gaps + self.missing + self.late

    def add(self, packet) -> tuple[bool, None]:
        now = self._clock()
        limit = UNDERRUN_GAP_MS / 1000
        if self._last_arrival is not None and now - self._last_arrival > limit:
            self.gaps += 1
        self._last_arrival = now
        seq = packet.sequence_number
        if self._next_seq is not None:
            ahead = (seq - self._next_seq) & 0xFFFF
            if ahead >= 0x8000:
                return False, None  # repeated or reordered
            self.missing += ahead
        self._next_seq = (seq + 1) & 0xFFFF
        if self._ts0 is None:
            self._ts0 = packet.timestamp
        offset = now - ((packet.timestamp - self._ts0) & 0xFFFFFFFF) / rtp_audio.RTP_CLOCK
        if self._min_offset is None or offset < self._min_offset:
            self._min_offset = offset
        elif offset - self._min_offset > limit:
            self.late += 1
        if len(packet._data) > _SILENCE_BYTES:  # the depayloaded frame
            self.audio_ms += 20.0
        return False, None

    def get(self, *args, **kwargs) -> None:
        return None  # the receiver's decoder thread ends at once

    def put(self, item, *args, **kwargs) -> None:
        return None


def relay_only(sdp: str, port: int = 9) -> str:
    """The offer with every candidate re-typed ``relay`` at ``port`` (RFC 8445
    §5.1.1: a relayed candidate; port 9 is *discard*, nobody answers)."""
    def retype(m: re.Match) -> str:
        parts = m.group(0).split()
        # a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> ...
        parts[5] = str(port)
        i = parts.index("typ")
        parts[i + 1] = "relay"
        return " ".join(parts[:i + 2]) + " raddr 0.0.0.0 rport 0"
    return re.sub(r"a=candidate:[^\r\n]*", retype, sdp)


_SILENCE_BYTES = len(rtp_audio.SILENCE_PACKET)
_SEAMS = ("_RTCRtpReceiver__jitter_buffer", "_RTCRtpReceiver__decoder_queue")
_OPUS: dict[int, list[bytes]] = {}


def _opus(clip: Clip) -> list[bytes]:
    """The clip as 20 ms Opus frames (encoded once)."""
    key = id(clip)
    if key not in _OPUS:
        pcm = clip.pcm24k()
        pcm += bytes(-len(pcm) % FRAME_BYTES)
        encoder = rtp_audio.OpusVoiceEncoder(20)
        _OPUS[key] = [bytes(encoder.encode(pcm[i:i + FRAME_BYTES], i // FRAME_BYTES))
                      for i in range(0, len(pcm), FRAME_BYTES)]
    return _OPUS[key]


async def run_webrtc_session(
    http: aiohttp.ClientSession,
    base_url: str,
    key: str,
    plan: SessionPlan,
    clip: Clip,
    *,
    model: str = "gpt-realtime",
    faults: bool = True,
    turn_url: str | None = None,
    connect_timeout_s: float = 10.0,
    clock=time.perf_counter,
) -> SessionResult:
    """Run one WebRTC session; failures become ``outcome="failed"``."""
    from voxgate.proxy.webrtc import ice as rtc_ice

    res = SessionResult(plan.index, plan.kind, "webrtc")
    res.started_s = t_start = clock()
    auth = {"Authorization": f"Bearer {key}"}
    try:
        async with http.post(base_url + "/v1/realtime/client_secrets",
                             json={"session": {**_SESSION, "model": model}}, headers=auth) as r:
            body = await r.json(content_type=None)
            if r.status != 200:
                res.http_status = r.status
                res.outcome = REFUSED if r.status in REFUSAL_STATUSES else FAILED
                res.error_code = error_of(body)[0]
                res.error = f"client_secrets HTTP {r.status}: {_code(body)}"
                return res
        ek = body["value"]
    except (aiohttp.ClientError, OSError, KeyError, ValueError) as exc:
        res.error = f"client_secrets: {type(exc).__name__}: {exc}"[:200]
        return res

    # No STUN server (aiortc's default is Google's, whose lookup waits up to
    # 5 s for a server-reflexive candidate offline), as OpenAI's guide code
    # has none: host candidates reach voxgate.
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    track = ClipTrack(_opus(clip), plan.audio_ms)
    rtp_pump.pump_sender(pc.addTrack(track), track)
    channel = pc.createDataChannel("oai-events")
    created = asyncio.Event()
    error_seen = asyncio.Event()
    t0 = clock()

    def on_message(data) -> None:
        res.events_received += 1
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        etype = event.get("type")
        if etype == "session.created" and res.connect_ms is None:
            res.connect_ms = (clock() - t0) * 1000.0
            created.set()
        elif etype == "error":
            err = event.get("error") or {}
            if isinstance(err, dict) and err.get("type") != "invalid_request_error":
                res.provider_error_seen = True
                error_seen.set()

    timing = ArrivalTiming(clock)

    def on_track(remote) -> None:
        receiver = next(t.receiver for t in pc.getTransceivers() if t.receiver.track is remote)
        for name in _SEAMS:
            setattr(receiver, name, timing)

    channel.on("message", on_message)
    pc.on("track", on_track)
    location: str | None = None
    try:
        with rtc_ice.host_addresses(["127.0.0.1"]):
            await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        if plan.kind == "turn_failure":
            sdp = relay_only(sdp)
        params = {"model": model}
        if faults:
            params["voxgate_fault"] = plan.fault
        async with http.post(base_url + "/v1/realtime/calls", params=params, data=sdp,
                             headers={"Authorization": f"Bearer {ek}",
                                      "Content-Type": "application/sdp"}) as r:
            answer = await r.text()
            if r.status != 201:
                res.http_status = r.status
                res.outcome = REFUSED if r.status in REFUSAL_STATUSES else FAILED
                res.error_code = error_of(answer)[0]
                res.error = f"calls HTTP {r.status}: {_code(answer)}"
                return res
            res.session_id = r.headers.get(SESSION_ID_HEADER)
            location = r.headers.get("Location")
        if plan.kind == "turn_failure":
            # Never apply the answer: no connectivity check reaches voxgate.
            res.outcome = ADMITTED
            return res
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await asyncio.wait_for(created.wait(), connect_timeout_s)
        await asyncio.wait_for(track.finished.wait(), plan.audio_ms / 1000 + 10)
        res.audio_in_ms = track.index * 20.0
        res.events_sent = 0
        # The last frames' echo: wait until the returned audio has caught up.
        deadline = clock() + 3.0
        while clock() < deadline and timing.audio_ms < res.audio_in_ms * 0.9:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        res.audio_out_ms = timing.audio_ms
        res.underruns += timing.underruns
        if plan.kind == "provider_error":
            await asyncio.wait_for(error_seen.wait(), 5.0)
        res.underruns += track.late
        res.underrun_kinds = {"arrival_gap": timing.gaps, "missing": timing.missing,
                              "late_arrival": timing.late, "sent_late": track.late}
        if plan.kind != "vanish":
            assert location is not None  # sent with every 201 answer
            async with http.post(base_url + location + "/hangup",
                                 headers={"Authorization": f"Bearer {ek}"}) as r:
                if r.status != 200:
                    res.error = f"hangup HTTP {r.status}"
                    return res
        res.outcome = ADMITTED
    except TimeoutError:
        res.error = ("no session.created" if not created.is_set() else
                     "no error event" if plan.kind == "provider_error" and track.finished.is_set()
                     else "timed out")
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        await pc.close()
        res.ended_s = clock()
        res.started_s = t_start
    return res


def _code(body) -> str:
    if isinstance(body, str):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body[:100]
    err = body.get("error") if isinstance(body, dict) else None
    return (err.get("code") or err.get("message", "")) if isinstance(err, dict) else str(body)[:100]
