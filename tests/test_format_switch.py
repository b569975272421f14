"""Audio formats switched mid-session, end to end over WebSocket: a client
through voxgate's relay to the local provider (its own process, loopback),
each session's record read back from the store (issue 20, item 1).

The client sends its ``session.update`` and, at once, without waiting for
``session.updated``, its next appends in the new format: voxgate counts
every append in the format it was sent in, so the stored ``audio_in_ms`` is
exact to the 20 ms chunk (24 kHz PCM16: 960 bytes per chunk; ``audio/pcmu``
and ``audio/pcma``: 160). A switch the provider rejects (an ``error``
answering the update) leaves the format as it was. The audio is real speech
(jfk.flac), 20 ms per append.
"""

from __future__ import annotations

import base64
from typing import Any

import aiohttp

from tests.test_provider_faults import connect, send, until
from voxgate.voice.audio import alaw_encode, decimate3, ulaw_encode

PCM_CHUNK = 960  # 20 ms of 24 kHz PCM16
G711_CHUNK = 160  # 20 ms of 8 kHz G.711
PCM = {"type": "audio/pcm", "rate": 24000}
PCMU = {"type": "audio/pcmu"}
PCMA = {"type": "audio/pcma"}
ENCODE = {"audio/pcmu": ulaw_encode, "audio/pcma": alaw_encode}


class Speech:
    """jfk.flac cut into 20 ms chunks, in any of the three formats."""

    def __init__(self, pcm24k: bytes) -> None:
        self.pcm = pcm24k
        self.pos = 0

    def chunk(self, fmt: dict[str, Any]) -> bytes:
        pcm = self.pcm[self.pos:self.pos + PCM_CHUNK]
        self.pos = (self.pos + PCM_CHUNK) % (len(self.pcm) - PCM_CHUNK)
        if fmt["type"] == "audio/pcm":
            return pcm
        data = ENCODE[fmt["type"]](decimate3(pcm))
        assert len(data) == G711_CHUNK
        return data


async def stream(ws: aiohttp.ClientWebSocketResponse, speech: Speech, fmt: dict[str, Any], chunks: int) -> int:
    """``chunks`` appends of 20 ms in ``fmt``; the bytes sent."""
    sent = 0
    for _ in range(chunks):
        data = speech.chunk(fmt)
        sent += len(data)
        await send(ws, type="input_audio_buffer.append", audio=base64.b64encode(data).decode())
    return sent


def formats(fin: dict[str, Any], fout: dict[str, Any] | None = None) -> dict[str, Any]:
    audio: dict[str, Any] = {"input": {"format": fin}}
    if fout is not None:
        audio["output"] = {"format": fout}
    return {"type": "realtime", "audio": audio}


def echoed(events: list[dict[str, Any]]) -> int:
    """Bytes of audio in the ``response.output_audio.delta`` events of ``events``."""
    return sum(len(base64.b64decode(e["delta"])) for e in events if e["type"] == "response.output_audio.delta")


async def echo_of(ws: aiohttp.ClientWebSocketResponse, nbytes: int) -> None:
    """Read until the echo of ``nbytes`` bytes of audio is back."""
    while nbytes > 0:
        nbytes -= echoed(await until(ws, "response.output_audio.delta"))


async def test_switch_to_pcmu_and_back_counts_each_append_in_its_format(server, http, jfk_pcm):
    """PCM16 → ``audio/pcmu`` → PCM16, the appends of each format sent right
    after the update that sets it: audio in exact to the chunk (before the
    fix, the first μ-law appends were counted as PCM16, 160 B = 3.3 ms)."""
    ws, sid = await connect(http, server, "echo")
    await until(ws, "session.created")
    speech = Speech(jfk_pcm)
    sent = await stream(ws, speech, PCM, 50)
    await send(ws, type="session.update", session=formats(PCMU))
    sent += await stream(ws, speech, PCMU, 75)
    await send(ws, type="session.update", session=formats(PCM))
    sent += await stream(ws, speech, PCM, 25)
    await echo_of(ws, sent)
    await ws.close()
    m = (await server.session(sid)).measurements
    assert m.audio_in_ms == 150 * 20  # 3 000 ms: 50 + 75 + 25 chunks
    # the output format stayed PCM16, as the provider said: the echo of the
    # μ-law bytes is 160 B of PCM16 each
    assert abs(m.audio_out_ms - (75 * 20 + 75 * G711_CHUNK / 48)) < 1e-6
    assert m.event_counts["session.update"] == 2 and m.event_counts["session.updated"] == 2


async def test_switch_to_pcma_in_and_out(server, http, jfk_pcm):
    """``audio/pcma`` both ways, then back to PCM16: in and out exact."""
    ws, sid = await connect(http, server, "echo")
    await until(ws, "session.created")
    speech = Speech(jfk_pcm)
    sent = await stream(ws, speech, PCM, 10)
    await send(ws, type="session.update", session=formats(PCMA, PCMA))
    sent += await stream(ws, speech, PCMA, 200)
    await send(ws, type="session.update", session=formats(PCM, PCM))
    sent += await stream(ws, speech, PCM, 40)
    await echo_of(ws, sent)
    await ws.close()
    record = await server.session(sid)
    m = record.measurements
    assert m.audio_in_ms == 250 * 20  # 5 000 ms: not more than 5 s
    assert m.audio_out_ms == 250 * 20
    assert (record.billable, record.reason) == (True, "billable")  # 10 s exchanged


async def test_switch_starting_in_pcmu_would_not_count_six_times_too_much(server, http, jfk_pcm):
    """The other way: ``audio/pcmu`` first, then PCM16 appends sent at once
    after the update. Counted at 160 B per 20 ms they would be 6× too much
    (2 s → 12 s, enough to make a short session billable)."""
    ws, sid = await connect(http, server, "echo")
    await until(ws, "session.created")
    await send(ws, type="session.update", session=formats(PCMU, PCMU))
    await until(ws, "session.updated")
    speech = Speech(jfk_pcm)
    sent = await stream(ws, speech, PCMU, 25)
    await send(ws, type="session.update", session=formats(PCM, PCM))
    sent += await stream(ws, speech, PCM, 75)
    await echo_of(ws, sent)
    await ws.close()
    record = await server.session(sid)
    m = record.measurements
    assert (m.audio_in_ms, m.audio_out_ms) == (2000, 2000)
    assert (record.billable, record.reason) == (False, "too_short")


async def test_switch_rejected_by_the_provider_reverts(server, http, jfk_pcm):
    """An update to ``audio/pcmu`` the provider rejects (an invalid voice in
    the same update: the local provider applies all or nothing, as OpenAI
    does) is answered by an ``error`` with its ``event_id``; the input format
    goes back to PCM16, so the PCM16 appends after it count 20 ms each. The
    same for a rejected update sent without ``event_id``. A later accepted
    switch still counts."""
    ws, sid = await connect(http, server, "echo")
    await until(ws, "session.created")
    speech = Speech(jfk_pcm)
    sent = await stream(ws, speech, PCM, 20)
    bad = formats(PCMU) | {"audio": {"input": {"format": PCMU}, "output": {"voice": ""}}}
    await send(ws, type="session.update", event_id="evt_bad_switch", session=bad)
    events = await until(ws, "error")
    sent -= echoed(events)
    error = events[-1]["error"]
    assert (error["type"], error["event_id"]) == ("invalid_request_error", "evt_bad_switch"), error
    sent += await stream(ws, speech, PCM, 30)
    await send(ws, type="session.update", session=bad)  # no event_id
    events = await until(ws, "error")
    sent -= echoed(events)
    error = events[-1]["error"]
    assert error["type"] == "invalid_request_error" and not error.get("event_id"), error
    sent += await stream(ws, speech, PCM, 30)
    await send(ws, type="session.update", session=formats(PCMU))
    sent += await stream(ws, speech, PCMU, 20)
    await echo_of(ws, sent)
    await ws.close()
    m = (await server.session(sid)).measurements
    assert m.audio_in_ms == 100 * 20  # 2 000 ms: 20 + 30 + 30 PCM16, 20 μ-law
    assert m.provider_errors == 0  # the client's own mistakes
    assert m.event_counts["session.update"] == 3 and m.event_counts["error"] == 2


async def test_appends_in_a_format_closed_by_the_client_at_once(server, http, jfk_pcm):
    """A client that switches, streams and hangs up without waiting for
    anything: what voxgate relayed before the close is what it counts, each
    append in its format (no echo; the provider's answers need not arrive)."""
    ws, sid = await connect(http, server, "fail_responses")
    await until(ws, "session.created")
    await send(ws, type="session.update", session={"type": "realtime",
                                                    "audio": {"input": {"turn_detection": None}}})
    speech = Speech(jfk_pcm)
    await stream(ws, speech, PCM, 5)
    await send(ws, type="session.update", session=formats(PCMA))
    await stream(ws, speech, PCMA, 7)
    await ws.close()
    m = (await server.session(sid)).measurements
    assert m.audio_in_ms == 12 * 20
    assert (m.closed_by, m.close_code) == ("client", 1000)
