"""Usage by modality, through voxgate with the official ``openai`` SDK over
a WebSocket to the local provider: a session of text turns, a spoken turn
(real speech, jfk.flac), an out-of-band text response and a cancelled one.
Every ``response.done`` usage (parsed by the SDK's GA models) adds up, and
voxgate's stored measurements equal the sums over them, modality by
modality, in the record, in ``GET /v1/sessions/{id}`` and in the receipt's
measurement rows."""

from __future__ import annotations

import asyncio
import base64
import math
from typing import Any

from openai import AsyncOpenAI

from tests.conftest import SLOW
from voxgate.proxy.ws_relay import SESSION_ID_HEADER
from voxgate.web.receipts import measurement_rows

TIMEOUT_S = 30.0 * SLOW
CHUNK = 24000 * 2 // 50  # 20 ms of 24 kHz PCM16

# (Measurements field, path in response.usage)
FIELDS = {
    "input_tokens": ("input_tokens",),
    "output_tokens": ("output_tokens",),
    "total_tokens": ("total_tokens",),
    "input_text_tokens": ("input_token_details", "text_tokens"),
    "input_audio_tokens": ("input_token_details", "audio_tokens"),
    "input_image_tokens": ("input_token_details", "image_tokens"),
    "cached_tokens": ("input_token_details", "cached_tokens"),
    "cached_text_tokens": ("input_token_details", "cached_tokens_details", "text_tokens"),
    "cached_audio_tokens": ("input_token_details", "cached_tokens_details", "audio_tokens"),
    "cached_image_tokens": ("input_token_details", "cached_tokens_details", "image_tokens"),
    "output_text_tokens": ("output_token_details", "text_tokens"),
    "output_audio_tokens": ("output_token_details", "audio_tokens"),
}


def at(usage: Any, path: tuple[str, ...]) -> int:
    for name in path:
        usage = getattr(usage, name)
    return int(usage)


async def until(conn: Any, etype: str, seen: list[Any]) -> Any:
    async with asyncio.timeout(TIMEOUT_S):
        async for event in conn:
            seen.append(event)
            if event.type == etype:
                return event
    raise AssertionError(f"connection ended before {etype}")


async def test_measurements_are_the_sums_of_response_done_usage(server, http, jfk_pcm):
    client = AsyncOpenAI(api_key=server.key, base_url=server.url + "/v1", max_retries=0)
    seen: list[Any] = []
    async with client.realtime.connect(model="gpt-realtime") as conn:
        sid = conn._connection.response.headers[SESSION_ID_HEADER]
        await until(conn, "session.created", seen)
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
        await until(conn, "session.updated", seen)

        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Hello, who are you?"}]})
        await conn.response.create()
        await until(conn, "response.done", seen)

        speech = jfk_pcm[:24000 * 2 * 3]  # 3.0 s of it
        for i in range(0, len(speech), CHUNK):
            await conn.input_audio_buffer.append(audio=base64.b64encode(speech[i:i + CHUNK]).decode())
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        await until(conn, "response.done", seen)

        await conn.response.create(response={"output_modalities": ["text"]})
        await until(conn, "response.done", seen)

        await conn.response.create(response={"conversation": "none", "output_modalities": ["text"], "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Summarise."}]}]})
        await until(conn, "response.done", seen)

        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": " ".join(f"Sentence number {n} is here." for n in range(12))}]})
        await conn.response.create()
        await until(conn, "response.output_audio.delta", seen)
        await conn.response.cancel()
        await until(conn, "response.done", seen)

    done = [e.response for e in seen if e.type == "response.done"]
    assert [r.status for r in done] == ["completed"] * 4 + ["cancelled"]
    usages = [r.usage for r in done]
    for u in usages:  # each usage adds up
        d, c = u.input_token_details, u.input_token_details.cached_tokens_details
        assert u.input_tokens == d.text_tokens + d.audio_tokens + d.image_tokens
        assert d.cached_tokens == c.text_tokens + c.audio_tokens + c.image_tokens <= u.input_tokens
        assert u.output_tokens == u.output_token_details.text_tokens + u.output_token_details.audio_tokens
        assert u.total_tokens == u.input_tokens + u.output_tokens
    spoken, text_only, out_of_band = usages[1], usages[2], usages[3]
    assert spoken.input_token_details.audio_tokens == math.ceil(3000 / 100)  # 1 token per 100 ms of user audio
    # the conversation only grew: each response read the previous one's input again, cached
    assert spoken.input_token_details.cached_tokens == usages[0].input_tokens
    assert text_only.input_token_details.cached_tokens == spoken.input_tokens
    assert text_only.input_token_details.cached_tokens_details.audio_tokens == 30
    assert text_only.output_token_details.audio_tokens == 0 < spoken.output_token_details.audio_tokens
    # out of band: its own input after the same instructions, of which only those are cached
    instructions = next(e for e in seen if e.type == "session.updated").session.instructions
    assert out_of_band.input_token_details.cached_tokens == math.ceil(len(instructions) / 4) > 0
    assert out_of_band.input_tokens > out_of_band.input_token_details.cached_tokens

    record = await server.session(sid)
    m = record.measurements
    sums = {name: sum(at(u, path) for u in usages) for name, path in FIELDS.items()}
    assert {name: getattr(m, name) for name in FIELDS} == sums
    assert m.responses == 5 and m.responses_completed == 4

    admin = {"Authorization": f"Bearer {server.admin_key}"}
    async with http.get(f"{server.url}/v1/sessions/{sid}", headers=admin) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["input_tokens"] == sums["input_tokens"]
    assert body["input_token_details"] == {
        "text_tokens": sums["input_text_tokens"], "audio_tokens": sums["input_audio_tokens"],
        "image_tokens": 0, "cached_tokens": sums["cached_tokens"],
        "cached_tokens_details": {"text_tokens": sums["cached_text_tokens"],
                                  "audio_tokens": sums["cached_audio_tokens"], "image_tokens": 0}}
    assert body["output_token_details"] == {"text_tokens": sums["output_text_tokens"],
                                            "audio_tokens": sums["output_audio_tokens"]}
    rows = dict(measurement_rows(record))
    assert rows["Tokens in: text / audio / image"] == (
        f"{sums['input_text_tokens']:,} / {sums['input_audio_tokens']:,} / 0 ({sums['cached_tokens']:,} cached)")
    assert rows["Tokens out: text / audio"] == f"{sums['output_text_tokens']:,} / {sums['output_audio_tokens']:,}"
