"""A small aiortc WebRTC client for tests: speaks PCM through an audio track,
keeps the ``oai-events`` events and the received audio (aiortc's own
receive path, as an independent peer: each frame's arrival time, RTP
timestamp and samples)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import av
import numpy as np
import orjson
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from tests.conftest import SLOW
from voxgate.proxy.webrtc import ice as rtc_ice
from voxgate.proxy.webrtc.media import pcm16_frame

RATE = 48000
FRAME = 960  # 20 ms at 48 kHz


class SpeechTrack(MediaStreamTrack):
    """PCM16 48 kHz mono played in real time (20 ms frames), then the track
    ends (no more RTP) unless ``then_silence``."""

    kind = "audio"

    def __init__(self, pcm48k: bytes, then_silence: bool = False) -> None:
        super().__init__()
        self.pcm = pcm48k
        self.then_silence = then_silence
        self.index = 0
        self.start: float | None = None
        self.finished = asyncio.Event()

    async def recv(self) -> av.AudioFrame:
        if self.start is None:
            self.start = time.monotonic()
        off = self.index * FRAME * 2
        if off >= len(self.pcm):
            self.finished.set()
            if not self.then_silence:
                self.stop()
                raise MediaStreamError
        due = self.start + self.index * 0.02
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk = self.pcm[off:off + FRAME * 2]
        chunk += bytes(FRAME * 2 - len(chunk))
        frame = pcm16_frame(chunk, RATE, self.index * FRAME)
        self.index += 1
        return frame


class Client:
    """One call from the test's side."""

    def __init__(self, base_url: str, pcm48k: bytes = b"", *, ice_servers=None,
                 relay: bool = False, then_silence: bool = False) -> None:
        self.base_url = base_url
        servers = [RTCIceServer(urls=s["urls"][0] if isinstance(s["urls"], list) else s["urls"],
                                username=s.get("username"), credential=s.get("credential"))
                   for s in (ice_servers or [])]
        self.pc = RTCPeerConnection(RTCConfiguration(
            iceServers=servers, iceTransportPolicy=RTCIceTransportPolicy.RELAY if relay else RTCIceTransportPolicy.ALL))
        self.track = SpeechTrack(pcm48k, then_silence)
        self.pc.addTrack(self.track)
        self.channel = self.pc.createDataChannel("oai-events")
        self.events: list[dict] = []
        self.arrivals: list[float] = []  # each event's arrival, monotonic s
        self.posted_at: float | None = None  # when the offer was posted, monotonic s
        self.opened = asyncio.Event()
        self.closed = asyncio.Event()
        self._waiters: list[tuple[str, asyncio.Future]] = []
        self.audio_frames = 0
        self.audio_samples_nonzero = 0
        # (arrival monotonic s, pts in 1/48000, mono PCM16 48 kHz samples)
        self.received: list[tuple[float, int, np.ndarray]] = []
        self.location: str | None = None
        self.session_id: str | None = None
        self.channel.on("open", self.opened.set)
        self.channel.on("close", self.closed.set)
        self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)
        self._tasks: list[asyncio.Task] = []

    def _on_message(self, data) -> None:
        event = orjson.loads(data)
        self.arrivals.append(time.monotonic())
        self.events.append(event)
        for etype, fut in list(self._waiters):
            if event.get("type") == etype and not fut.done():
                fut.set_result(event)

    def _on_track(self, track) -> None:
        self._tasks.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.audio_frames += 1
            samples = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0]
            self.received.append((time.monotonic(), frame.pts, samples))
            if np.any(samples):
                self.audio_samples_nonzero += 1

    async def offer(self) -> str:
        with rtc_ice.host_addresses(["127.0.0.1"]):
            await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def connect(self, http: aiohttp.ClientSession, key: str, *,
                      multipart_session: dict | None = None, expect: int = 201,
                      params: dict | None = None):
        sdp = await self.offer()
        headers = {"Authorization": f"Bearer {key}"}
        self.posted_at = time.monotonic()
        if multipart_session is None:
            resp = await http.post(self.base_url + "/v1/realtime/calls", data=sdp, params=params,
                                   headers={**headers, "Content-Type": "application/sdp"})
        else:
            form = aiohttp.FormData()
            form.add_field("sdp", sdp)
            form.add_field("session", orjson.dumps(multipart_session).decode(),
                           content_type="application/json")
            resp = await http.post(self.base_url + "/v1/realtime/calls", data=form,
                                   params=params, headers=headers)
        body = await resp.text()
        assert resp.status == expect, body
        if expect != 201:
            return resp, body
        assert resp.content_type == "application/sdp"
        self.location = resp.headers["Location"]
        self.session_id = resp.headers["X-Voxgate-Session-Id"]
        await self.pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
        return resp, body

    @property
    def call_id(self) -> str:
        assert self.location is not None
        return self.location.rsplit("/", 1)[1]

    def send(self, event: dict) -> None:
        self.channel.send(orjson.dumps(event).decode())

    async def wait_event(self, etype: str, timeout_s: float = 30.0) -> dict:
        for event in self.events:
            if event.get("type") == etype:
                return event
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((etype, fut))
        try:
            async with asyncio.timeout(timeout_s * SLOW):
                return await fut
        except TimeoutError:
            raise AssertionError(
                f"no {etype} within {timeout_s} s: {[e.get('type') for e in self.events]}"
            ) from None

    def types(self) -> list[str]:
        return [e.get("type") for e in self.events]

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await self.pc.close()
