"""The OpenAI Agents SDK for JavaScript (``@openai/agents-realtime`` 0.20,
from tests/js/package-lock.json) in Node over its ``OpenAIRealtimeWebSocket``
transport, pointed at voxgate with the local provider: a tool call end to
end from a spoken request (Piper speech made at set-up, streamed with
``session.sendAudio()``), then ``session.interrupt()`` mid-reply. The SDK's own code runs in
tests/js/agents-ws.mjs; this test starts it and asserts on the JSON it
prints (the script's header says what it does)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, SLOW

SCRIPT = ROOT / "tests" / "js" / "agents-ws.mjs"
SDK = ROOT / "tests" / "js" / "node_modules" / "@openai" / "agents-realtime" / "package.json"
TIMEOUT_S = 40.0 * SLOW
TOOL_RESULT = "sunny and 21 degrees"


def node() -> str:
    path = shutil.which("node")
    if path is None or not SDK.is_file():
        pytest.fail("node or tests/js/node_modules missing: run `make test` (it installs Node.js and runs "
                    "`npm ci` in tests/js)", pytrace=False)
    return path


async def run_script(url: str, key: str, pcm: Path) -> dict:
    proc = await asyncio.create_subprocess_exec(node(), str(SCRIPT), url, key, str(pcm), cwd=str(SCRIPT.parent),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(TIMEOUT_S):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = out.decode().strip().splitlines()
    assert lines, f"no output (exit {proc.returncode}): {err.decode()[-2000:]}"
    result = json.loads(lines[-1])
    assert proc.returncode == 0 and "failed" not in result, (result, err.decode()[-2000:])
    return result


async def test_tool_call_then_interrupt_and_truncate(server, http, spoken_request, tmp_path):
    pcm = tmp_path / "request.pcm"
    pcm.write_bytes(spoken_request)
    result = await run_script(server.ws_url + "?model=gpt-realtime", server.key, pcm)
    assert result["errors"] == []
    assert result["unparsed"] == []  # every server event passed the SDK's own schema

    # the tool rule (voxgate/voice/tools.py): "weather" names get_weather, the city follows "in"
    assert result["tool"]["heard"] == ["what is the weather forecast in london"]
    assert result["tool"]["calls"] == ["london"]
    assert result["tool"]["reply"] == f"The get weather result is: {TOOL_RESULT} in london."

    assert result["history"] == [
        ["message", "user", "completed"], ["function_call", "get_weather", "completed"],
        ["message", "assistant", "completed"], ["message", "user", "completed"],
        ["message", "assistant", "incomplete"]]

    interrupt = result["interrupt"]
    assert interrupt["response_status"] == "cancelled"
    assert interrupt["audio_interrupted"] == 1
    last = interrupt["last_assistant"]
    assert last["status"] == "incomplete"
    assert last["transcript"].startswith("You said:"), last
    truncated = interrupt["truncated"]
    assert truncated["item_id"] == last["item_id"] and truncated["content_index"] == 0
    assert 100 <= truncated["audio_end_ms"] < 5000

    admin = {"Authorization": f"Bearer {server.admin_key}"}
    async with http.get(server.url + "/v1/sessions", headers=admin) as resp:
        sessions = (await resp.json())["data"]
    assert len(sessions) == 1
    record = await server.session(sessions[0]["id"])
    assert record.measurements.closed_by == "client"
    assert record.measurements.event_counts.get("conversation.item.truncate") == 1
