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
from voxgate.voice.responder import assistant_reply

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


LONG_REQUEST = "Please tell me a long story about a lighthouse keeper and the storm that came in from the sea at night"


async def test_interrupt_mid_reply_leaves_the_last_assistant_item_truncated(server, http):
    """``session.interrupt()`` 150 ms after the first audio of a long reply,
    with ``turn_detection.interrupt_response`` true: the SDK sends only
    ``conversation.item.truncate`` (no ``response.cancel``, as voxgate's
    meter counts). The reply stops (``response.done`` cancelled, no audio
    after it), the SDK retrieves the item after ``conversation.item.truncated``
    and its history ends with that assistant item ``incomplete``. The
    retrieved transcript is what was heard by 150 ms (of slow speech: not a
    whole word); the SDK keeps the transcript it accumulated when a
    retrieved one is empty (agents/realtime/session.py), which is the part of
    the reply sent before the interruption, never the whole reply."""
    agent = RealtimeAgent(name="Assistant", instructions="You are a helpful voice assistant.")
    runner = RealtimeRunner(starting_agent=agent, config={"model_settings": {
        "model_name": "gpt-realtime",
        "modalities": ["audio"],
        "speed": 0.25,  # the slowest speech: the long reply is still being synthesised when interrupted
        "turn_detection": {"type": "server_vad", "interrupt_response": True},
    }})
    session = await runner.run(model_config={"url": server.ws_url + "?model=gpt-realtime", "api_key": server.key})
    raw: list[dict[str, Any]] = []  # server events, as the SDK received them
    history: list[Any] = []
    errors: list[Any] = []

    def retrieved_truncated_item() -> dict[str, Any] | None:
        ids = [e["item_id"] for e in raw if e["type"] == "conversation.item.truncated"]
        return next((e["item"] for e in raw if ids and e["type"] == "conversation.item.retrieved"
                     and e["item"]["id"] == ids[0]), None)

    async with session:
        await session.send_message(LONG_REQUEST)
        interrupted = False
        async with asyncio.timeout(TIMEOUT_S):
            async for event in session:
                if event.type == "raw_model_event" and event.data.type == "raw_server_event":
                    raw.append(event.data.data)
                elif event.type == "history_updated":
                    history = event.history
                    if retrieved_truncated_item() is not None:
                        break
                elif event.type == "error":
                    errors.append(event.error)
                if not interrupted and any(e["type"] == "response.output_audio.delta" for e in raw):
                    await asyncio.sleep(0.15)
                    await session.interrupt()
                    interrupted = True

    assert not errors, errors
    types = [e["type"] for e in raw]
    done = raw[types.index("response.done")]["response"]
    assert done["status"] == "cancelled" and done["status_details"]["reason"] == "client_cancelled"
    assert "response.output_audio.delta" not in types[types.index("response.done"):]
    said = done["output"][0]["content"][0]["transcript"]
    assert said and said != assistant_reply(LONG_REQUEST)  # cut short

    truncated = next(e for e in raw if e["type"] == "conversation.item.truncated")
    assert 150 <= truncated["audio_end_ms"] < 1000
    stored = retrieved_truncated_item()
    assert stored is not None and stored["status"] == "incomplete"
    assert said.startswith(stored["content"][0]["transcript"])
    assert len(stored["content"][0]["transcript"]) < len(said)

    last = [i for i in history if isinstance(i, AssistantMessageItem)][-1]
    assert last.item_id == truncated["item_id"] and last.status == "incomplete"
    heard = "".join(part.transcript or "" for part in last.content if part.type == "audio")
    assert heard == (stored["content"][0]["transcript"] or said)

    admin = {"Authorization": f"Bearer {server.admin_key}"}
    async with http.get(server.url + "/v1/sessions", headers=admin) as resp:
        sessions = (await resp.json())["data"]
    record = await server.session(sessions[0]["id"])
    counts = record.measurements.event_counts
    assert counts.get("conversation.item.truncate") == 1 and "response.cancel" not in counts
