"""The OpenAI Agents SDK for Python (``openai-agents``, ``agents.realtime``)
pointed at voxgate with its local provider, used as its realtime quickstart
shows (``RealtimeAgent`` + ``RealtimeRunner``, a ``function_tool``), with
only the WebSocket URL and the API key changed: a spoken request naming the
tool makes the SDK call it, the tool's result goes back, the spoken reply
carries it, and voxgate records a billable session."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jsonschema
from agents import function_tool
from agents.realtime import (
    AssistantMessageItem,
    RealtimeAgent,
    RealtimeRunner,
    RealtimeSession,
)

from tests.conftest import SLOW

TIMEOUT_S = 40.0 * SLOW
CHUNK = 24000 * 2 // 50  # 20 ms of 24 kHz PCM16
TOOL_RESULT = "sunny and 21 degrees"


async def stream(session: RealtimeSession, pcm: bytes, speed: float = 4.0) -> None:
    """Send ``pcm`` as a microphone would, in 20 ms chunks at ``speed``× real time."""
    for i in range(0, len(pcm), CHUNK):
        await session.send_audio(pcm[i:i + CHUNK])
        await asyncio.sleep(0.02 / speed)


def reply_transcripts(history: list[Any]) -> list[str]:
    """Transcripts of the completed assistant audio messages of the SDK's history."""
    return [part.transcript or "" for item in history
            if isinstance(item, AssistantMessageItem) and item.status == "completed"
            for part in item.content if part.type == "audio"]


async def test_spoken_request_calls_the_tool_and_the_reply_carries_its_result(server, http, spoken_request):
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Look up the weather forecast for a city."""
        calls.append(city)
        return f"{TOOL_RESULT} in {city}"

    agent = RealtimeAgent(name="Assistant", instructions="You are a helpful voice assistant.",
                          tools=[get_weather])
    runner = RealtimeRunner(starting_agent=agent, config={"model_settings": {
        "model_name": "gpt-realtime",
        "voice": "ash",
        "modalities": ["audio"],
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm16",
        "input_audio_transcription": {"model": "gpt-4o-mini-transcribe"},
        "turn_detection": {"type": "semantic_vad", "interrupt_response": True},
    }})
    session = await runner.run(model_config={"url": server.ws_url + "?model=gpt-realtime", "api_key": server.key})
    tool_events: list[Any] = []
    heard: list[str] = []
    errors: list[Any] = []
    history: list[Any] = []
    reply_audio_bytes = 0
    async with session:
        sending = asyncio.ensure_future(stream(session, spoken_request))
        try:
            async with asyncio.timeout(TIMEOUT_S):
                async for event in session:
                    if event.type in ("tool_start", "tool_end"):
                        tool_events.append(event)
                    elif event.type == "audio" and len(tool_events) == 2:
                        reply_audio_bytes += len(event.audio.data)
                    elif event.type == "error":
                        errors.append(event.error)
                    elif event.type == "raw_model_event" \
                            and event.data.type == "input_audio_transcription_completed":
                        heard.append(event.data.transcript)
                    elif event.type == "history_updated":
                        history = event.history
                    elif event.type == "agent_end" and tool_events and any(
                            TOOL_RESULT in t for t in reply_transcripts(history)):
                        break
            await sending
        finally:
            sending.cancel()

    assert not errors, errors
    assert heard == ["what is the weather forecast in london"]  # the speech is the same on every run
    assert [e.type for e in tool_events] == ["tool_start", "tool_end"]
    start, end = tool_events
    assert start.tool.name == end.tool.name == "get_weather"
    arguments = json.loads(start.arguments)
    jsonschema.validate(arguments, get_weather.params_json_schema)
    # the tool rule (voxgate/voice/tools.py): the string argument is what follows "in"
    assert arguments == {"city": "london"}
    assert calls == [arguments["city"]]
    assert end.output == f"{TOOL_RESULT} in {calls[0]}"
    call_item = next(i for i in history if i.type == "function_call")
    assert (call_item.name, call_item.status, call_item.output) == ("get_weather", "completed", end.output)
    assert reply_transcripts(history)[-1] == f"The get weather result is: {end.output}."
    assert reply_audio_bytes > 24000 * 2  # more than a second of spoken reply

    admin = {"Authorization": f"Bearer {server.admin_key}"}
    async with http.get(server.url + "/v1/sessions", headers=admin) as resp:
        assert resp.status == 200
        sessions = (await resp.json())["data"]
    assert len(sessions) == 1
    record = await server.session(sessions[0]["id"])
    assert (record.billable, record.reason) == (True, "billable"), record.rule
    assert record.measurements.audio_in_ms >= len(spoken_request) / 48 - 1
    async with http.get(server.url + "/billing/usage", headers=admin) as resp:
        assert (await resp.json())["sessionsUsed"] == 1
