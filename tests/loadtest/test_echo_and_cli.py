"""The echo upstream the load test relies on, and ``voxgate loadtest`` from
the command line."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import orjson

from tests.conftest import SLOW
from voxgate.cli import build_parser
from voxgate.loadtest.audio import Clip, tag_of
from voxgate.loadtest.cli import run_cli


async def test_echo_sends_each_chunk_straight_back(voice_url):
    """Echo mode: every append comes back at once as one
    ``response.output_audio.delta`` with the same base64 audio, in order,
    with no transcription (no STT) and no other audio (no TTS)."""
    clip = Clip.load()
    sent = [clip.chunk_b64(seq) for seq in range(25)]
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(voice_url, params={"voxgate_fault": "echo"},
                                   headers={"Authorization": "Bearer x"}) as ws:
            events = []
            async with asyncio.timeout(10 * SLOW):
                assert orjson.loads((await ws.receive()).data)["type"] == "session.created"
                for b64 in sent:
                    await ws.send_str(orjson.dumps(
                        {"type": "input_audio_buffer.append", "audio": b64}).decode())
                deltas = []
                while len(deltas) < len(sent):
                    event = orjson.loads((await ws.receive()).data)
                    events.append(event["type"])
                    if event["type"] == "response.output_audio.delta":
                        deltas.append(event["delta"])
                await ws.send_str('{"type":"input_audio_buffer.commit"}')
                transcripts = []
                while "response.done" not in events:
                    event = orjson.loads((await ws.receive()).data)
                    events.append(event["type"])
                    if event["type"] == "response.output_audio_transcript.done":
                        transcripts.append(event["transcript"])
    assert deltas == sent
    assert [tag_of(d) for d in deltas] == list(range(25))
    assert events.count("response.output_audio.delta") == 25
    # no STT (no input transcription) and no TTS (no text spoken)
    assert not any(t.startswith("conversation.item.input_audio_transcription") for t in events)
    assert "response.output_audio_transcript.delta" not in events and transcripts == [""]


async def test_cli_writes_the_json_report(make_server, tmp_path):
    server = await make_server(plan="roomy")
    out = tmp_path / "report.json"
    args = build_parser().parse_args([
        "loadtest", "--url", server.url, "--key", server.key, "--sessions", "3",
        "--concurrency", "3", "--duration", "1", "--faults", "short=0.34", "--seed", "2",
        "--json", str(out), "--quiet", "--max-time", "30"])
    assert await run_cli(args) == 0
    report = json.loads(out.read_text())
    assert report["admitted"] == 3 and report["refused"] == 0 and report["failed"] == 0
    audit = report["audit"]
    assert {k: audit[k] for k in ("checked", "matched", "mismatched", "unrecorded", "mismatches")} == {
        "checked": 3, "matched": 3, "mismatched": 0, "unrecorded": 0, "mismatches": []}
    assert audit["audio"]["checked"] == audit["audio"]["within_tolerance"] == 3
    assert sum(k["matched"] for k in audit["by_kind"].values()) == 3
    assert report["by_kind"]["short"]["sessions"] == 1
    assert len(report["session_results"]) == 3


def test_cli_rejects_a_bad_mix(capsys):
    args = build_parser().parse_args(["loadtest", "--key", "k", "--faults", "nope=0.1"])
    assert asyncio.run(run_cli(args)) == 2
    assert "unknown session kind 'nope'" in capsys.readouterr().err
