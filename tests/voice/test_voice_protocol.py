"""Protocol fidelity of the local provider against the official ``openai``
SDK on loopback: function calling, the interruption lifecycle, truncation,
``response.create`` options and turn detection settings. Every server event
received is validated with ``openai.types.realtime`` models (no unknown
fields either) by :func:`validated`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import orjson
import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from tests.conftest import SLOW, SPEECH
from tests.voice.server_events import validated
from voxgate.config import VoiceSettings
from voxgate.voice import VoiceProvider, load_pcm16, responder
from voxgate.voice.audio import resample_pcm16

TIMEOUT_S = 20.0 * SLOW

WEATHER = {
    "type": "function", "name": "get_weather", "description": "Look up the weather forecast for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "minLength": 1},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    }, "required": ["city"], "additionalProperties": False},
}
LIGHTS = {
    "type": "function", "name": "set_lights", "description": "Switch the lamps of a room",
    "parameters": {"type": "object", "properties": {
        "room": {"type": "string"}, "on": {"type": "boolean"}}, "required": ["room", "on"]},
}


class Conn:
    """An SDK connection that keeps every validated server event."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.seen: list[dict[str, Any]] = []

    async def send(self, **event: Any) -> None:
        await self.conn.send(event)

    async def until(self, etype: str, timeout_s: float = TIMEOUT_S) -> list[dict[str, Any]]:
        """Events up to and including the next of type ``etype``."""
        out = []
        async with asyncio.timeout(timeout_s):
            while True:
                event = validated(await self.conn.recv_bytes())
                self.seen.append(event)
                out.append(event)
                if event["type"] == etype:
                    return out


@pytest_asyncio.fixture
async def provider() -> AsyncIterator[VoiceProvider]:
    p = VoiceProvider(VoiceSettings())
    await p.start("127.0.0.1", 0)
    yield p
    await p.stop()


@contextlib.asynccontextmanager
async def session(provider: VoiceProvider, **update: Any) -> AsyncIterator[Conn]:
    port = int(provider.url.split(":")[2].split("/")[0])  # type: ignore[union-attr]
    client = AsyncOpenAI(api_key="sk-test", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
    async with client.realtime.connect(model="gpt-realtime") as raw:
        conn = Conn(raw)
        await conn.until("session.created")
        if update:
            await conn.send(type="session.update", session={"type": "realtime", **update})
            await conn.until("session.updated")
        yield conn


async def say(conn: Conn, text: str) -> None:
    await conn.send(type="conversation.item.create",
                    item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
    await conn.until("conversation.item.done")


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def the(events: list[dict[str, Any]], etype: str) -> dict[str, Any]:
    return next(e for e in events if e["type"] == etype)


def check_call(events: list[dict[str, Any]], tool: dict[str, Any]) -> dict[str, Any]:
    """The function_call of a completed response, checked event by event;
    returns the item of response.done."""
    t = types(events)
    assert t == ["response.created", "response.output_item.added", "conversation.item.added",
                 *["response.function_call_arguments.delta"] * t.count("response.function_call_arguments.delta"),
                 "response.function_call_arguments.done", "response.output_item.done", "conversation.item.done",
                 "response.done"], t
    added = the(events, "response.output_item.added")["item"]
    assert added["type"] == "function_call" and added["status"] == "in_progress" and added["arguments"] == ""
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    done_args = the(events, "response.function_call_arguments.done")
    assert done_args["arguments"] == deltas and done_args["name"] == tool["name"]
    assert done_args["call_id"] == added["call_id"] and done_args["item_id"] == added["id"]
    response = events[-1]["response"]
    assert response["status"] == "completed" and len(response["output"]) == 1
    item = response["output"][0]
    assert item == the(events, "response.output_item.done")["item"] == the(events, "conversation.item.done")["item"]
    assert item | {"arguments": ""} == added | {"status": "completed"}
    jsonschema.validate(orjson.loads(item["arguments"]), tool["parameters"])
    return item


# -- function calling ------------------------------------------------------------------

async def test_function_call_then_output_spoken(provider):
    """A user message naming a tool's description word gets a function_call;
    its function_call_output then gets a spoken reply (audio + transcript)."""
    async with session(provider, tools=[LIGHTS, WEATHER], tool_choice="auto") as conn:
        await say(conn, "What will the weather be in Paris for three days")
        await conn.send(type="response.create")
        item = check_call(await conn.until("response.done"), WEATHER)
        assert orjson.loads(item["arguments"]) == {"city": "paris", "days": 3}

        await conn.send(type="conversation.item.create", item={
            "type": "function_call_output", "call_id": item["call_id"],
            "output": '{"forecast": "sunny", "high_celsius": 24}'})
        added = (await conn.until("conversation.item.done"))[0]
        assert added["type"] == "conversation.item.added" and added["item"]["type"] == "function_call_output"
        await conn.send(type="response.create")
        events = await conn.until("response.done")
        said = "The get weather result is: forecast sunny, high celsius 24."
        assert the(events, "response.output_audio_transcript.done")["transcript"] == said
        assert sum(len(base64.b64decode(e["delta"])) for e in events
                   if e["type"] == "response.output_audio.delta") > 24000
        assert events[-1]["response"]["output"][0]["content"][0] == {"type": "output_audio", "transcript": said}

        # out of band, text only: the call and its output as the response's input
        output = {"type": "function_call_output", "call_id": "call_2", "output": "42"}
        await conn.send(type="response.create", response={"output_modalities": ["text"], "conversation": "none",
                                                         "input": [{**item, "call_id": "call_2", "id": "item_c2"},
                                                                   output]})
        events = await conn.until("response.done")
        assert the(events, "response.output_text.done")["text"] == "The get weather result is: 42."
        # the default conversation ends with the spoken reply: auto calls no tool without a new user turn
        await conn.send(type="response.create", response={"output_modalities": ["text"]})
        events = await conn.until("response.done")
        assert the(events, "response.output_item.added")["item"]["type"] == "message"


async def test_tool_choice_rules(provider):
    async with session(provider, tools=[WEATHER, LIGHTS]) as conn:
        await say(conn, "please set lights in the kitchen")
        await conn.send(type="response.create", response={"tool_choice": "none", "output_modalities": ["text"],
                                                         "conversation": "none"})
        events = await conn.until("response.done")
        assert the(events, "response.output_item.added")["item"]["type"] == "message"

        await conn.send(type="response.create")
        item = check_call(await conn.until("response.done"), LIGHTS)
        assert orjson.loads(item["arguments"]) == {"room": "kitchen", "on": False}

        await say(conn, "good morning")
        await conn.send(type="response.create", response={"output_modalities": ["text"]})
        events = await conn.until("response.done")
        assert the(events, "response.output_text.done")["text"] == "Hello! How can I help you today?"
        await conn.send(type="response.create", response={"tool_choice": "required"})
        item = check_call(await conn.until("response.done"), WEATHER)  # nothing named: the first tool
        assert orjson.loads(item["arguments"]) == {"city": "good morning"}
        await conn.send(type="response.create",
                        response={"tool_choice": {"type": "function", "name": "set_lights"}})
        check_call(await conn.until("response.done"), LIGHTS)

        only = {**LIGHTS, "name": "dim_lights", "description": "Dim the lamps"}
        await conn.send(type="response.create", response={"tools": [only], "tool_choice": "required"})
        assert check_call(await conn.until("response.done"), only)["name"] == "dim_lights"

        await conn.send(type="response.create", event_id="evt_bad",
                        response={"tool_choice": {"type": "function", "name": "nope"}})
        err = (await conn.until("error"))[-1]["error"]
        assert (err["code"], err["param"], err["event_id"]) == \
            ("invalid_value", "response.tool_choice.name", "evt_bad")
        await conn.send(type="session.update", session={"type": "realtime", "tools": [{"type": "function"}]})
        assert (await conn.until("error"))[-1]["error"]["param"] == "session.tools[0].name"


@pytest.mark.parametrize("vad", [False, True], ids=["manual_commit", "server_vad"])
async def test_function_call_from_spoken_request(provider, vad):
    """Piper speaks a sentence naming the tool; PocketSphinx hears it; the
    audio turn (committed by the client, or by server VAD with its automatic
    response) gets the function call."""
    synth = provider.synthesizer
    pcm = await asyncio.to_thread(synth.synthesize_sync, "What is the weather forecast in London?")
    pcm = bytes(48000 // 2) + resample_pcm16(pcm, synth.sample_rate, 24000) + bytes(48000)
    td = {"type": "server_vad", "silence_duration_ms": 600} if vad else None
    async with session(provider, tools=[WEATHER], audio={"input": {"turn_detection": td,
                                                                 "transcription": {"model": "whisper-1"}}}) as conn:
        for i in range(0, len(pcm), 4800):
            await conn.send(type="input_audio_buffer.append", audio=base64.b64encode(pcm[i:i + 4800]).decode())
        if not vad:
            await conn.send(type="input_audio_buffer.commit")
            await conn.send(type="response.create")
        events = await conn.until("response.done")
        if vad:
            assert "input_audio_buffer.speech_stopped" in types(events)
        heard = the(events, "conversation.item.input_audio_transcription.completed")["transcript"]
        assert "weather" in heard
        delta = the(events, "conversation.item.input_audio_transcription.delta")
        assert events.index(delta) < events.index(the(events, "conversation.item.input_audio_transcription.completed"))
        assert delta["delta"] == heard
        response_events = [e for e in events[events.index(the(events, "response.created")):]
                           if not e["type"].startswith("conversation.item.input_audio_transcription")]
        call = check_call(response_events, WEATHER)
        assert orjson.loads(call["arguments"])["city"]


# -- interruption ----------------------------------------------------------------------

LONG = " ".join(f"Sentence number {n} is here." for n in range(1, 9))


def check_closed(events: list[dict[str, Any]], reason: str) -> dict[str, Any]:
    """After an interruption: every open part closed, item incomplete,
    response.done cancelled; returns the item."""
    t = types(events)
    tail = ["response.output_audio.done", "response.output_audio_transcript.done", "response.content_part.done",
            "response.output_item.done", "conversation.item.done", "response.done"]
    assert [x for x in t if x in tail] == tail, t
    sent = "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta")
    assert the(events, "response.output_audio_transcript.done")["transcript"] == sent
    assert the(events, "response.content_part.done")["part"] == {"type": "audio", "transcript": sent}
    response = events[-1]["response"]
    assert response["status"] == "cancelled"
    assert response["status_details"] == {"type": "cancelled", "reason": reason, "error": None} \
        or response["status_details"] == {"type": "cancelled", "reason": reason}
    item = response["output"][0]
    assert item["status"] == "incomplete" and item == the(events, "response.output_item.done")["item"]
    assert item["content"] == [{"type": "output_audio", "transcript": sent}]
    return item


async def test_cancel_closes_parts_retrieve_and_truncate(provider):
    async with session(provider) as conn:
        await conn.send(type="session.update", session={"type": "realtime", "audio": {"input": {
            "turn_detection": None}}})
        await conn.until("session.updated")
        await say(conn, LONG)
        await conn.send(type="response.create")
        events = await conn.until("response.output_audio.delta")
        item_id = the(events, "response.output_item.added")["item"]["id"]
        await conn.send(type="conversation.item.retrieve", item_id=item_id)
        events += await conn.until("conversation.item.retrieved")
        live = events.pop()["item"]
        assert live["status"] == "in_progress" and live["content"][0]["type"] == "output_audio"
        await conn.send(type="response.cancel")
        events += await conn.until("response.done")
        item = check_closed(events, "client_cancelled")
        assert item["content"][0]["transcript"].startswith(live["content"][0]["transcript"])
        sent_ms = sum(len(base64.b64decode(e["delta"])) for e in conn.seen
                      if e["type"] == "response.output_audio.delta") / 48

        await conn.send(type="conversation.item.retrieve", item_id=item["id"])
        got = (await conn.until("conversation.item.retrieved"))[-1]["item"]
        assert got == item

        await conn.send(type="conversation.item.truncate", item_id=item["id"], content_index=0,
                        audio_end_ms=int(sent_ms) + 500, event_id="evt_long")
        assert (await conn.until("error"))[-1]["error"]["param"] == "audio_end_ms"
        await conn.send(type="conversation.item.truncate", item_id=item["id"], content_index=0, audio_end_ms=0)
        done = (await conn.until("conversation.item.truncated"))[-1]
        assert (done["item_id"], done["content_index"], done["audio_end_ms"]) == (item["id"], 0, 0)
        await conn.send(type="conversation.item.retrieve", item_id=item["id"])
        got = (await conn.until("conversation.item.retrieved"))[-1]["item"]
        assert got["content"] == [{"type": "output_audio", "transcript": ""}]


async def test_truncate_trims_the_transcript_to_what_was_heard(provider):
    async with session(provider) as conn:
        await say(conn, "one two three four five six seven eight")
        await conn.send(type="response.create")
        events = await conn.until("response.done")
        item = events[-1]["response"]["output"][0]
        full = item["content"][0]["transcript"]
        first = the(events, "response.output_audio_transcript.delta")["delta"]
        assert full.startswith(first) and len(full) > len(first)  # two sentences
        first_ms = 0
        for e in events:  # audio of the first sentence: deltas before the second transcript delta
            if e["type"] == "response.output_audio_transcript.delta" and e["delta"] != first:
                break
            if e["type"] == "response.output_audio.delta":
                first_ms += len(base64.b64decode(e["delta"])) / 48
        await conn.send(type="conversation.item.truncate", item_id=item["id"], content_index=0,
                        audio_end_ms=math.ceil(first_ms))
        await conn.until("conversation.item.truncated")
        await conn.send(type="conversation.item.retrieve", item_id=item["id"])
        got = (await conn.until("conversation.item.retrieved"))[-1]["item"]
        assert got["content"][0]["transcript"] == first


async def test_barge_in_closes_parts(provider):
    async with session(provider) as conn:
        await say(conn, LONG)
        await conn.send(type="response.create")
        events = await conn.until("response.output_audio.delta")
        speech = load_pcm16(SPEECH / "goforward-16k-s16le.raw")

        async def stream() -> None:
            for i in range(0, len(speech), 4800):
                await conn.send(type="input_audio_buffer.append",
                                audio=base64.b64encode(speech[i:i + 4800]).decode())
                await asyncio.sleep(0.0125)

        streaming = asyncio.ensure_future(stream())
        events += await conn.until("response.done")
        await streaming
        assert "input_audio_buffer.speech_started" in types(events)
        item = check_closed(events, "turn_detected")
        await conn.send(type="conversation.item.retrieve", item_id=item["id"])
        assert (await conn.until("conversation.item.retrieved"))[-1]["item"] == item


async def test_item_done_names_the_previous_item_of_item_added(provider):
    """Four turns (text, a function call and its output, a spoken reply, an
    audio commit): for every item, item.done's previous_item_id is item.added's,
    and together they chain the items in the order they were added."""
    async with session(provider, tools=[WEATHER], audio={"input": {"turn_detection": None}}) as conn:
        await say(conn, "Hello there")
        await conn.send(type="response.create")
        await conn.until("response.done")
        await say(conn, "What is the weather in Rome")
        await conn.send(type="response.create")
        call = (await conn.until("response.done"))[-1]["response"]["output"][0]
        assert call["type"] == "function_call"
        await conn.send(type="conversation.item.create", item={
            "type": "function_call_output", "call_id": call["call_id"], "output": "rainy"})
        await conn.until("conversation.item.done")
        await conn.send(type="response.create", response={"output_modalities": ["text"]})
        await conn.until("response.done")
        await conn.send(type="input_audio_buffer.append", audio=base64.b64encode(bytes(9600)).decode())
        await conn.send(type="input_audio_buffer.commit")
        await conn.until("conversation.item.done")
        await conn.send(type="response.create", response={"output_modalities": ["text"]})
        await conn.until("response.done")

    added = {e["item"]["id"]: e["previous_item_id"] for e in conn.seen if e["type"] == "conversation.item.added"}
    done = {e["item"]["id"]: e["previous_item_id"] for e in conn.seen if e["type"] == "conversation.item.done"}
    assert len(added) == 8  # 4 user or tool items, 4 response items
    assert done == added
    order = list(added)
    assert [added[i] for i in order] == [None, *order[:-1]]


async def test_truncate_while_streaming_ends_the_response_and_sticks(provider):
    """A long spoken reply (the slowest speech, so it is still being
    synthesised), truncated at 150 ms after its second audio delta, with no
    response.cancel: the response ends cancelled with its parts closed,
    nothing more is sent for the item, and the stored item keeps the
    transcript of what had been sent up to 150 ms."""
    async with session(provider, audio={"input": {"turn_detection": None}, "output": {"speed": 0.25}}) as conn:
        await say(conn, LONG)
        await conn.send(type="response.create")
        events = await conn.until("response.output_audio.delta")
        events += await conn.until("response.output_audio.delta")
        item_id = the(events, "response.output_item.added")["item"]["id"]
        first = the(events, "response.output_audio_transcript.delta")["delta"]
        await conn.send(type="conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=150)
        events += await conn.until("conversation.item.truncated")
        truncated = events[-1]
        assert (truncated["item_id"], truncated["content_index"], truncated["audio_end_ms"]) == (item_id, 0, 150)
        t = types(events)
        tail = ["response.output_audio.done", "response.output_audio_transcript.done",
                "response.content_part.done", "response.output_item.done", "conversation.item.done",
                "response.done", "conversation.item.truncated"]
        assert [x for x in t if x in tail] == tail, t
        response = the(events, "response.done")["response"]
        assert response["status"] == "cancelled"
        assert response["status_details"]["reason"] == "client_cancelled"
        sent = "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta")
        assert response["output"][0]["status"] == "incomplete"
        assert sent != responder.assistant_reply(LONG)  # the reply was cut short

        await conn.send(type="conversation.item.retrieve", item_id=item_id)
        later = await conn.until("conversation.item.retrieved")
        got = later[-1]["item"]
        assert got["status"] == "incomplete"
        heard = got["content"][0]["transcript"]
        # 150 ms of slow speech: at most a word or two of the first sentence (truncate_segments)
        assert first.startswith(heard) and len(heard.split()) <= 2 and len(heard) < len(sent)
        assert got["content"] == [{"type": "output_audio", "transcript": heard}]
        assert not [e for e in later if e.get("item_id") == item_id or e.get("response_id") == response["id"]]

        # the next response reads the truncated item: a new response may start at once
        await conn.send(type="response.create", response={"output_modalities": ["text"]})
        after = await conn.until("response.done")
        assert after[-1]["response"]["status"] == "completed"
        assert not [e for e in after if e.get("item_id") == item_id]


# -- response.create options ------------------------------------------------------------

async def test_metadata_out_of_band_and_instructions(provider):
    async with session(provider, output_modalities=["text"]) as conn:
        await say(conn, "hello")
        await conn.send(type="response.create", response={
            "conversation": "none", "metadata": {"topic": "classify"},
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go north"}]}],
            "output_modalities": ["text"], "instructions": "Be terse."})
        events = await conn.until("response.done")
        assert "conversation.item.added" not in types(events) and "conversation.item.done" not in types(events)
        created, done = the(events, "response.created")["response"], events[-1]["response"]
        assert created["metadata"] == done["metadata"] == {"topic": "classify"}
        assert done["conversation_id"] is None and done["output_modalities"] == ["text"]
        assert the(events, "response.output_text.done")["text"] == "You said: go north. I heard 2 words."
        await conn.send(type="conversation.item.retrieve", item_id=done["output"][0]["id"])
        assert (await conn.until("error"))[-1]["error"]["code"] == "item_not_found"

        await conn.send(type="response.create", response={"conversation": "none"})  # context: the conversation
        events = await conn.until("response.done")
        assert the(events, "response.output_text.done")["text"] == "Hello! How can I help you today?"
        assert events[-1]["response"]["metadata"] is None

        await conn.send(type="response.create", response={"metadata": {"a": 1}})
        assert (await conn.until("error"))[-1]["error"]["param"] == "response.metadata"


@pytest.mark.parametrize("modality,limit", [("text", 5), ("audio", 30)])
async def test_max_output_tokens_incomplete(provider, modality, limit):
    async with session(provider) as conn:
        await say(conn, LONG)
        await conn.send(type="response.create",
                        response={"max_output_tokens": limit, "output_modalities": [modality]})
        events = await conn.until("response.done")
        response = events[-1]["response"]
        assert response["status"] == "incomplete"
        assert response["status_details"]["type"] == "incomplete"
        assert response["status_details"]["reason"] == "max_output_tokens"
        assert response["max_output_tokens"] == limit
        assert 0 < response["usage"]["output_tokens"] <= limit
        assert response["output"][0]["status"] == "incomplete"
        assert the(events, "response.output_item.done")["item"]["status"] == "incomplete"


# -- turn detection ----------------------------------------------------------------------

async def test_semantic_vad_echoed_without_server_vad_fields(provider):
    async with session(provider) as conn:
        await conn.send(type="session.update", session={"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "semantic_vad", "eagerness": "low", "threshold": 0.9}}}})
        td = (await conn.until("session.updated"))[-1]["session"]["audio"]["input"]["turn_detection"]
        assert td == {"type": "semantic_vad", "eagerness": "low", "create_response": True,
                      "interrupt_response": True}
        await conn.send(type="session.update", session={"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "semantic_vad", "eagerness": "eager"}}}})
        assert (await conn.until("error"))[-1]["error"]["param"] == \
            "session.audio.input.turn_detection.eagerness"
        # a whole turn with semantic VAD (low eagerness waits 1.5 s of silence)
        pcm = load_pcm16(SPEECH / "goforward-16k-s16le.raw", 16000)
        pcm = resample_pcm16(pcm, 16000, 24000) + bytes(48000 * 2)
        for i in range(0, len(pcm), 4800):
            await conn.send(type="input_audio_buffer.append", audio=base64.b64encode(pcm[i:i + 4800]).decode())
        events = await conn.until("response.done")
        assert "input_audio_buffer.speech_stopped" in types(events)
        assert events[-1]["response"]["status"] == "completed"


# -- chat responder -----------------------------------------------------------------------

@pytest_asyncio.fixture
async def tool_chat() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A chat-completions server that asks for ``get_weather`` until it sees a
    ``tool`` message, then answers with text. Yields (base_url, requests)."""
    from aiohttp import web

    requests: list[dict[str, Any]] = []

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        requests.append(body)
        if body["messages"][-1]["role"] == "tool":
            message = {"role": "assistant", "content": "It is " + body["messages"][-1]["content"] + "."}
        else:
            message = {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_up1", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}
        return web.json_response({"choices": [{"message": message}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/v1", requests
    await runner.cleanup()


async def test_chat_responder_passes_tools_and_maps_tool_calls(tool_chat):
    base, requests = tool_chat
    p = VoiceProvider(VoiceSettings(responder="chat", chat_url=base, chat_model="tiny"))
    await p.start("127.0.0.1", 0)
    try:
        async with session(p, tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"},
                           output_modalities=["text"]) as conn:
            await say(conn, "how is it up north")
            await conn.send(type="response.create")
            item = check_call(await conn.until("response.done"), WEATHER)
            assert (item["call_id"], item["arguments"]) == ("call_up1", '{"city": "Oslo"}')
            sent = requests[-1]
            assert sent["tools"] == [{"type": "function", "function": {
                k: WEATHER[k] for k in ("name", "description", "parameters")}}]
            assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
            await conn.send(type="conversation.item.create", item={
                "type": "function_call_output", "call_id": "call_up1", "output": "snowing"})
            await conn.until("conversation.item.done")
            await conn.send(type="response.create", response={"tool_choice": "auto"})
            events = await conn.until("response.done")
            assert the(events, "response.output_text.done")["text"] == "It is snowing."
            assert requests[-1]["messages"][-2:] == [
                {"role": "assistant", "content": None, "tool_calls": [{"id": "call_up1", "type": "function",
                                                                       "function": {"name": "get_weather",
                                                                                    "arguments": '{"city": "Oslo"}'}}]},
                {"role": "tool", "tool_call_id": "call_up1", "content": "snowing"}]
            assert requests[-1]["tool_choice"] == "auto"
    finally:
        await p.stop()


# -- input transcription ------------------------------------------------------------------

async def _audio_turn(conn: Conn) -> list[dict[str, Any]]:
    pcm = resample_pcm16(load_pcm16(SPEECH / "goforward-16k-s16le.raw", 16000), 16000, 24000)
    for i in range(0, len(pcm), 4800):
        await conn.send(type="input_audio_buffer.append", audio=base64.b64encode(pcm[i:i + 4800]).decode())
    await conn.send(type="input_audio_buffer.commit")
    await conn.send(type="response.create", response={"output_modalities": ["text"]})
    return await conn.until("response.done")


async def test_transcription_events_follow_the_session_setting(provider):
    no_vad = {"input": {"turn_detection": None}}
    async with session(provider, audio={"input": {"turn_detection": None,
                                                  "transcription": {"model": "whisper-1"}}}) as conn:
        events = await _audio_turn(conn)
        t = types(events)
        assert t.index("conversation.item.input_audio_transcription.delta") \
            < t.index("conversation.item.input_audio_transcription.completed")
        heard = the(events, "conversation.item.input_audio_transcription.completed")["transcript"]
        assert "forward" in heard
    async with session(provider, audio={"input": {**no_vad["input"], "transcription": None}}) as conn:
        events = await _audio_turn(conn)
        assert not any(e.startswith("conversation.item.input_audio_transcription") for e in types(events))
        # still transcribed for the responder
        assert "forward" in the(events, "response.output_text.done")["text"]
    async with session(provider, audio=no_vad) as conn:  # never set: null, as OpenAI's default
        events = await _audio_turn(conn)
        assert not any(e.startswith("conversation.item.input_audio_transcription") for e in types(events))
        assert "forward" in the(events, "response.output_text.done")["text"]


async def test_cancelled_response_keeps_the_turns_transcription(provider):
    """A response cancelled while it waits for the committed turn's input
    transcription (barge-in, ``response.cancel``) does not take the
    transcription with it: ``conversation.item.input_audio_transcription.completed``
    still comes, with the words."""
    from pathlib import Path

    from voxgate.voice.audio import load_pcm16

    speech = load_pcm16(Path(__file__).resolve().parents[2] / "voxgate" / "data" / "speech"
                        / "jfk.flac", 24000)
    async with session(provider, audio={"input": {"turn_detection": None,
                                                  "transcription": {"model": "whisper-1"}}}) as conn:
        for i in range(0, len(speech), 24000):
            await conn.send(type="input_audio_buffer.append",
                            audio=base64.b64encode(speech[i:i + 24000]).decode())
        await conn.send(type="input_audio_buffer.commit")
        item_id = (await conn.until("input_audio_buffer.committed"))[-1]["item_id"]
        await conn.send(type="response.create")
        await conn.until("response.created")
        await conn.send(type="response.cancel")  # before the ~2 s of decoding is done
        events = await asyncio.wait_for(
            conn.until("conversation.item.input_audio_transcription.completed"), 30)
        done = events[-1]
        assert done["item_id"] == item_id
        assert "country" in done["transcript"], done["transcript"]
        assert any(e["type"] == "response.done" and e["response"]["status"] == "cancelled"
                   for e in conn.seen)
