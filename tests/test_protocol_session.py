"""Session configuration and the customer's rate limits as a client sees
them through voxgate, WebSocket (the official ``openai`` SDK) and WebRTC
(the ``oai-events`` data channel, aiortc) alike, against the local provider:

- a session opened with an ephemeral key minted with a session config gets
  that config in its first event, ``session.created`` (as OpenAI's), and no
  unsolicited ``session.updated``;
- ``rate_limits.updated`` carries the plan's figures after ``session.created``
  and after each ``response.done``; the provider's own (its ``rate_limits``
  fault) never reaches the client;
- and the hold behind the first point (``KeySession``), sans I/O.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pydantic
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeServerEvent

from tests.conftest import SLOW
from tests.webrtc.client import Client
from tests.webrtc.test_calls import mint
from voxgate.proxy.events import KeySession

WEATHER = {
    "type": "function", "name": "get_weather", "description": "Look up the weather forecast for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
KEY_CONFIG = {
    "type": "realtime",
    "model": "gpt-realtime",
    "instructions": "Answer like a ship's captain.",
    "output_modalities": ["audio"],
    "tools": [WEATHER],
    "tool_choice": "auto",
    "audio": {
        "input": {"transcription": {"model": "whisper-1"},
                  "turn_detection": {"type": "server_vad", "silence_duration_ms": 800}},
        "output": {"voice": "verse"},
    },
}
# the limits in the provider's rate_limits.updated (voxgate.voice.faults.PROVIDER_RATE_LIMITS)
PROVIDER_LIMIT_FIGURES = (5000, 800000)
RTC = {"webrtc": {"host_addresses": ["127.0.0.1"], "ice_timeout_s": 5.0 * SLOW}}
TEXT_TURN = [
    {"type": "conversation.item.create",
     "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello there"}]}},
    {"type": "response.create", "response": {"output_modalities": ["text"]}},
]
_SERVER_EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RealtimeServerEvent)


def config_of(session: dict[str, Any]) -> dict[str, Any]:
    """A session object without what belongs to one session or one key
    (its ``id``; ``expires_at``: the key's expiry in the minted object)."""
    return {k: v for k, v in session.items() if k not in ("id", "expires_at")}


def check_plan_limits(event: dict[str, Any], *, rpm: int, sessions: int, concurrency: int) -> None:
    """The plan's figures with one session of the account in progress; the
    event validates against the SDK's GA model (``name`` is
    ``requests``/``tokens`` or absent there)."""
    _SERVER_EVENT.validate_python(event)
    limits = event["rate_limits"]
    (requests,) = [x for x in limits if x.get("name") == "requests"]  # the provider's would be a second
    assert requests["limit"] == rpm and 0 <= requests["remaining"] < rpm
    assert 0 < requests["reset_seconds"] <= 60
    by_name = {x["voxgate_name"]: x for x in limits if "voxgate_name" in x}
    assert by_name["sessions"]["limit"] == sessions
    assert by_name["sessions"]["remaining"] == sessions - 1  # nothing billable yet, this one in progress
    assert 0 < by_name["sessions"]["reset_seconds"] <= 31 * 86400
    assert by_name["concurrency"] == {"voxgate_name": "concurrency", "limit": concurrency,
                                      "remaining": concurrency - 1}
    assert len(limits) == 3 and not any(x.get("limit") in PROVIDER_LIMIT_FIGURES for x in limits)


class Ws:
    """An SDK connection keeping every raw server event."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.events: list[dict[str, Any]] = []

    async def until(self, etype: str, timeout_s: float = 20.0) -> list[dict[str, Any]]:
        out = []
        async with asyncio.timeout(timeout_s * SLOW):
            while True:
                event = orjson.loads(await self.conn.recv_bytes())
                self.events.append(event)
                out.append(event)
                if event["type"] == etype:
                    return out


def sdk(server, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key, base_url=server.url + "/v1", max_retries=0)


async def test_websocket_session_created_is_the_minted_config(make_server, http):
    server = await make_server(plan="ratelimited")
    ek = await mint(http, server, session=KEY_CONFIG)
    async with sdk(server, ek["value"]).realtime.connect(model="gpt-realtime") as raw:
        ws = Ws(raw)
        first = (await ws.until("session.created"))[0]
        assert first["type"] == "session.created"
        assert config_of(first["session"]) == config_of(ek["session"])
        assert first["session"]["id"].startswith("sess_")
        (limits,) = await ws.until("rate_limits.updated")
        check_plan_limits(limits, rpm=3, sessions=100, concurrency=5)
        for event in TEXT_TURN:
            await raw.send(event)
        await ws.until("response.done")
        after = await ws.until("rate_limits.updated")
        assert after == [after[-1]]  # right after response.done
        check_plan_limits(after[-1], rpm=3, sessions=100, concurrency=5)
    assert "session.updated" not in [e["type"] for e in ws.events]


async def test_websocket_own_session_update_still_answered(make_server, http):
    """Only the key's own session.update is folded into session.created:
    the client's session.update gets its session.updated."""
    server = await make_server()
    ek = await mint(http, server, session=KEY_CONFIG)
    async with sdk(server, ek["value"]).realtime.connect(model="gpt-realtime") as raw:
        ws = Ws(raw)
        await ws.until("session.created")
        await raw.send({"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief."}})
        updated = (await ws.until("session.updated"))[-1]
        assert updated["session"]["instructions"] == "Be brief."
        assert updated["session"]["audio"]["output"]["voice"] == "verse"


async def test_websocket_key_config_the_provider_refuses(make_server, http):
    """A key minted with a config the provider refuses: the client still
    gets session.created (the provider's defaults) first, then the
    provider's error naming the field, and the session goes on."""
    server = await make_server()
    ek = await mint(http, server, session={"type": "realtime", "audio": {"output": {"speed": 9}}})
    async with sdk(server, ek["value"]).realtime.connect(model="gpt-realtime") as raw:
        ws = Ws(raw)
        events = await ws.until("error")
        assert [e["type"] for e in events] == ["session.created", "rate_limits.updated", "error"]
        assert events[0]["session"]["audio"]["output"]["speed"] == 1.0
        assert events[-1]["error"]["param"] == "session.audio.output.speed"
        for event in TEXT_TURN:
            await raw.send(event)
        assert (await ws.until("response.done"))[-1]["response"]["status"] == "completed"


async def test_websocket_provider_rate_limits_never_reach_the_client(make_server):
    """The provider sends its own rate_limits.updated in every response
    (its ``rate_limits`` fault, as OpenAI does): the client sees only its
    plan's, after session.created and after each response.done."""
    server = await make_server(plan="ratelimited")
    async with sdk(server, server.key).realtime.connect(
            model="gpt-realtime", extra_query={"voxgate_fault": "rate_limits"}) as raw:
        ws = Ws(raw)
        await ws.until("session.created")
        for _ in range(2):
            for event in TEXT_TURN:
                await raw.send(event)
            await ws.until("response.done")
        await ws.until("rate_limits.updated")
    types = [e["type"] for e in ws.events]
    limits = [e for e in ws.events if e["type"] == "rate_limits.updated"]
    assert len(limits) == 3  # after session.created and after both response.done
    for i in (i for i, t in enumerate(types) if t == "rate_limits.updated"):
        assert types[i - 1] in ("session.created", "response.done")
    for event in limits:
        check_plan_limits(event, rpm=3, sessions=100, concurrency=5)


async def test_webrtc_session_created_is_the_minted_config(make_server, http):
    server = await make_server(plan="ratelimited", **RTC)
    # the provider also sends its own rate_limits.updated (fault set through the key's config)
    ek = await mint(http, server, session={**KEY_CONFIG, "voxgate_fault": "rate_limits"})
    client = Client(server.url, b"", then_silence=True)
    try:
        await client.connect(http, ek["value"])
        created = await client.wait_event("session.created", 10)
        assert client.events[0] is created
        # on a call the media formats are voxgate's (PCM16 24 kHz bridged to Opus)
        assert config_of(created["session"]) == config_of(ek["session"])
        check_plan_limits(await client.wait_event("rate_limits.updated", 10),
                          rpm=3, sessions=100, concurrency=5)
        for event in TEXT_TURN:
            client.send(event)
        await client.wait_event("response.done", 20)
        for _ in range(100):
            if client.types().count("rate_limits.updated") == 2:
                break
            await asyncio.sleep(0.02)
        types = client.types()
        assert types.count("rate_limits.updated") == 2, types  # none of the provider's
        assert types[types.index("response.done") + 1] == "rate_limits.updated"
        check_plan_limits(client.events[types.index("response.done") + 1],
                          rpm=3, sessions=100, concurrency=5)
        assert "session.updated" not in types
    finally:
        await client.close()


# -- the hold itself, sans I/O ------------------------------------------------------------

def feed(ks: KeySession, *events: dict[str, Any]) -> list[dict[str, Any] | None]:
    out = []
    for event in events:
        out += [e for _, e, _ in ks.upstream(event["type"], event, orjson.dumps(event).decode())]
    return out


def test_key_session_folds_its_update_into_session_created():
    ks = KeySession({"type": "realtime", "instructions": "Hi."})
    update = orjson.loads(ks.update or "")
    assert update["type"] == "session.update" and update["session"] == {"type": "realtime", "instructions": "Hi."}
    created = {"type": "session.created", "event_id": "evt_1", "session": {"id": "sess_1", "instructions": ""}}
    speech = {"type": "input_audio_buffer.speech_started", "event_id": "evt_2"}
    updated = {"type": "session.updated", "event_id": "evt_3", "session": {"id": "sess_1", "instructions": "Hi."}}
    assert feed(ks, created, speech) == []  # held
    assert ks.pending
    assert feed(ks, updated) == [{"type": "session.created", "event_id": "evt_1", "session": updated["session"]},
                                 speech]
    assert not ks.pending


def test_key_session_refused_update_releases_created_then_the_error():
    ks = KeySession({"type": "realtime", "voice": 7})
    event_id = orjson.loads(ks.update or "")["event_id"]
    created = {"type": "session.created", "event_id": "evt_1", "session": {"id": "sess_1"}}
    other_error = {"type": "error", "error": {"type": "invalid_request_error", "event_id": "evt_other"}}
    error = {"type": "error", "error": {"type": "invalid_request_error", "event_id": event_id}}
    assert feed(ks, created, other_error) == []
    assert feed(ks, error) == [created, error, other_error]
    assert not ks.pending


def test_key_session_without_config_does_nothing():
    ks = KeySession(None)
    assert ks.update is None and not ks.pending
