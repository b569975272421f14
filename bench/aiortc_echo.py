"""A bare aiortc loopback doing the same media work as voxgate's WebRTC
bridge, with no provider, metering or events: Opus in, decode, resample to
24 kHz PCM16 and back to 48 kHz, Opus out (``python -m bench.aiortc_echo
--port P``). It speaks just enough of the Realtime WebRTC flow for
``voxgate loadtest --transport webrtc --direct``: a dummy client secret,
``POST /v1/realtime/calls`` → SDP answer, ``session.created`` on the data
channel, ``POST …/hangup``.

Its own late frames, for the benchmark's "bridge late frames": a frame
handed to aiortc's sender more than 60 ms later than its pts implies
(against the earliest frame of the track); the running count goes to the
file named by ``VOXGATE_BENCH_LATE_FILE`` each time it grows."""

from __future__ import annotations

import argparse
import asyncio
import fractions
import os
import time
import uuid

import av
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

PCS: dict[str, RTCPeerConnection] = {}
LATE_S = 0.060
_FILE = os.environ.get("VOXGATE_BENCH_LATE_FILE")
_late = [0]


def _count_late() -> None:
    _late[0] += 1
    if _FILE:
        with open(_FILE, "w") as fh:
            fh.write(str(_late[0]))


class EchoTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, source) -> None:
        super().__init__()
        self.source = source
        self.down = av.AudioResampler(format="s16", layout="mono", rate=24000)
        self.up = av.AudioResampler(format="s16", layout="mono", rate=48000)
        self.pending: list[av.AudioFrame] = []
        self.pts = 0
        self.min_offset: float | None = None  # s, arrival minus pts time

    async def recv(self) -> av.AudioFrame:
        while not self.pending:
            frame = await self.source.recv()
            for f24 in self.down.resample(frame):
                f24.pts = None
                self.pending.extend(self.up.resample(f24))
        frame = self.pending.pop(0)
        frame.pts = self.pts
        frame.time_base = fractions.Fraction(1, 48000)
        self.pts += frame.samples
        offset = time.monotonic() - frame.pts / 48000
        if self.min_offset is None or offset < self.min_offset:
            self.min_offset = offset
        elif offset - self.min_offset > LATE_S:
            _count_late()
        return frame


async def client_secrets(request: web.Request) -> web.Response:
    return web.json_response({"value": "ek_bench", "expires_at": 0})


async def calls(request: web.Request) -> web.Response:
    from voxgate.proxy.webrtc import ice as rtc_ice

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # as voxgate: no STUN server
    call_id = "rtc_" + uuid.uuid4().hex
    PCS[call_id] = pc

    @pc.on("datachannel")
    def on_dc(channel) -> None:
        channel.send('{"type":"session.created","event_id":"e","session":{}}')

    @pc.on("track")
    def on_track(track) -> None:
        pc.addTrack(EchoTrack(track))

    await pc.setRemoteDescription(RTCSessionDescription(await request.text(), "offer"))
    with rtc_ice.host_addresses(["127.0.0.1"]):
        await pc.setLocalDescription(await pc.createAnswer())
    return web.Response(status=201, text=pc.localDescription.sdp, content_type="application/sdp",
                        headers={"Location": f"/v1/realtime/calls/{call_id}"})


async def hangup(request: web.Request) -> web.Response:
    pc = PCS.pop(request.match_info["call_id"], None)
    if pc is not None:
        await pc.close()
    return web.json_response({})


async def main(port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/realtime/client_secrets", client_secrets)
    app.router.add_post("/v1/realtime/calls", calls)
    app.router.add_post("/v1/realtime/calls/{call_id}/hangup", hangup)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    import uvloop

    uvloop.run(main(p.parse_args().port))
