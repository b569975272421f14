"""The official ``openai`` SDK's realtime client pointed at voxgate (only
``base_url`` and the key changed), used as OpenAI's function-calling guide
shows: ``session.tools`` with a function, the user's spoken request names it,
the model's ``function_call`` arrives with arguments valid against the
schema, the app sends ``function_call_output`` and ``response.create``, and
the spoken reply carries the result; voxgate records a billable session."""

from __future__ import annotations

import base64
import json
from typing import Any

import jsonschema
from openai import AsyncOpenAI

from tests.conftest import SLOW

TIMEOUT_S = 40.0 * SLOW
CHUNK = 24000 * 2 // 50  # 20 ms of 24 kHz PCM16
PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOL = {"type": "function", "name": "get_weather",
        "description": "Look up the weather forecast for a city.", "parameters": PARAMETERS}


async def until(conn: Any, etype: str) -> Any:
    """The next server event of type ``etype`` (an ``error`` fails the test)."""
    async for event in conn:
        assert event.type != "error", event
        if event.type == etype:
            return event
    raise AssertionError(f"connection closed before {etype}")


async def test_spoken_request_calls_the_tool_through_voxgate(server, http, spoken_request):
    client = AsyncOpenAI(api_key=server.key, base_url=server.url + "/v1")
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await until(conn, "session.created")
        await conn.session.update(session={
            "type": "realtime", "tools": [TOOL], "tool_choice": "auto",
            "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"},
                                "turn_detection": {"type": "server_vad"}}}})
        await until(conn, "session.updated")
        for i in range(0, len(spoken_request), CHUNK):
            await conn.input_audio_buffer.append(
                audio=base64.b64encode(spoken_request[i:i + CHUNK]).decode())
        done = await until(conn, "response.done")
        calls = [item for item in done.response.output or [] if item.type == "function_call"]
        assert [c.name for c in calls] == ["get_weather"], done.response
        arguments = json.loads(calls[0].arguments or "{}")
        jsonschema.validate(arguments, PARAMETERS)
        assert arguments == {"city": "london"}

        result = f"sunny and 21 degrees in {arguments['city']}"
        await conn.conversation.item.create(item={
            "type": "function_call_output", "call_id": calls[0].call_id, "output": result})
        await conn.response.create()
        reply = await until(conn, "response.done")
    assert reply.response.status == "completed"
    spoken = [part.transcript for item in reply.response.output or [] if item.type == "message"
              for part in item.content or [] if part.type == "output_audio"]
    assert spoken and result in spoken[0], spoken
    async with http.get(server.url + "/v1/sessions",
                        headers={"Authorization": f"Bearer {server.admin_key}"}) as resp:
        sessions = (await resp.json())["data"]
    assert len(sessions) == 1, sessions
    record = await server.session(sessions[0]["id"])
    assert (record.billable, record.reason) == (True, "billable"), record.rule
