"""Every completed session gets its provider cost (issue 21, item 2): a
fake provider on loopback sends ``response.done`` events (and an input
transcription) with known usage; voxgate records ``provider_cost_usd``
equal to the hand-computed price to 1e-6 (figures in ``test_pricing``),
``null`` with the reason for an unpriced model, with ``[pricing]``
overrides applied; ``GET /v1/sessions`` shows it to customers only with
``show_provider_cost``."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import aiohttp
import pytest_asyncio
from aiohttp import web

from tests.conftest import SLOW, free_port, merge_settings, start_server
from tests.economics.test_pricing import TRANSCRIPTION, USAGE_1, USAGE_2


class FakeProvider:
    """A Realtime provider on loopback: ``session.created`` naming the
    requested model (and ``transcription_model`` as its input
    transcription), then, for each ``response.create``, the next usage of
    ``usages`` in a completed ``response.done``, the first one preceded by
    an input transcription whose usage is ``TRANSCRIPTION``. ``received``:
    every client event that reached it."""

    def __init__(self, usages: list[dict], transcription_model: str | None = None) -> None:
        self.usages = usages
        self.transcription_model = transcription_model
        self.received: list[dict] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/realtime", self.realtime)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"ws://127.0.0.1:{port}/v1/realtime"

    async def realtime(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("realtime",))
        await ws.prepare(request)
        transcription = ({"model": self.transcription_model}
                         if self.transcription_model else None)
        await ws.send_json({"type": "session.created", "event_id": "event_0", "session": {
            "type": "realtime", "object": "realtime.session", "model": request.query["model"],
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                "transcription": transcription}}}})
        n = 0
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            self.received.append(msg.json())
            if msg.json().get("type") != "response.create":
                continue
            if n == 0 and self.transcription_model:
                await ws.send_json({
                    "type": "conversation.item.input_audio_transcription.completed",
                    "event_id": "event_t", "item_id": "item_1", "content_index": 0,
                    "transcript": "hello", "usage": TRANSCRIPTION})
            usage = self.usages[n % len(self.usages)]
            n += 1
            await ws.send_json({"type": "response.done", "event_id": f"event_{n}", "response": {
                "object": "realtime.response", "id": f"resp_{n}", "status": "completed",
                "output": [], "usage": usage}})
        return ws

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest_asyncio.fixture
async def economy(tmp_path, catalog_path):
    """Factory: ``await economy(provider, **settings overrides)`` → a
    voxgate server relaying to the fake ``provider``."""
    made: list = []

    async def factory(provider: FakeProvider, **overrides):
        await provider.start()
        made.append(provider)
        base = {"data_dir": str(tmp_path / f"data{len(made)}"), "catalog": str(catalog_path),
                "upstream": {"provider": "local", "url": provider.url, "connect_timeout_s": 5.0}}
        server = await start_server(merge_settings(base, overrides), "roomy")
        made.append(server)
        return server

    yield factory
    for thing in reversed(made):
        if hasattr(thing, "runner") and not isinstance(thing, FakeProvider):
            await thing.runner.cleanup()
        else:
            await thing.close()


async def run_session(server, model: str, responses: int) -> dict:
    """One session on ``model`` with ``responses`` responses; the stored
    session as ``GET /v1/sessions/{id}`` returns it once completed."""
    headers = {"Authorization": f"Bearer {server.key}"}
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{server.ws_url}?model={model}", headers=headers,
                                   protocols=("realtime",)) as ws:
            done = 0
            async with asyncio.timeout(10 * SLOW):
                for _ in range(responses):
                    await ws.send_json({"type": "response.create"})
                async for msg in ws:
                    if msg.json().get("type") == "response.done":
                        done += 1
                        if done == responses:
                            break
        deadline = time.monotonic() + 5 * SLOW
        while True:
            (record,) = await server.store.list_sessions(server.account_id, limit=5)
            if record.status == "completed":
                break
            assert time.monotonic() < deadline, record
            await asyncio.sleep(0.02)
        async with http.get(f"{server.url}/v1/sessions/{record.id}", headers=headers) as resp:
            assert resp.status == 200
            return await resp.json()


async def test_gpt_realtime_cost_with_transcription(economy):
    """Two responses on gpt-realtime ($0.1264384) plus a gpt-4o-transcribe
    transcription ($0.00095): $0.1273884 → 0.127388."""
    server = await economy(FakeProvider([USAGE_1, USAGE_2], "gpt-4o-transcribe"),
                           pricing={"show_provider_cost": True})
    body = await run_session(server, "gpt-realtime", 2)
    assert body["input_token_details"]["audio_tokens"] == 2300
    assert body["provider_cost_usd"] == 0.127388
    assert body["provider_cost_reason"] is None
    record = await server.store.get_session(body["id"])
    assert record.provider_cost_usd == Decimal("0.127388")


async def test_gpt_realtime_mini_cost(economy):
    server = await economy(FakeProvider([USAGE_1, USAGE_2]), pricing={"show_provider_cost": True})
    body = await run_session(server, "gpt-realtime-mini", 2)
    assert body["provider_cost_usd"] == 0.038869


async def test_unpriced_model_is_null_with_reason(economy):
    server = await economy(FakeProvider([USAGE_1]), pricing={"show_provider_cost": True})
    body = await run_session(server, "gpt-unheard-of", 1)
    assert body["provider_cost_usd"] is None
    assert body["provider_cost_reason"] == "the session's model 'gpt-unheard-of' is not in the price list"


async def test_config_overrides_apply(economy):
    """``[pricing.models."gpt-realtime"] audio_input = 30``: the 2224
    uncached audio input tokens cost 2224 × $30 instead of $32 per 1M:
    $0.1264384 − $0.004448 = $0.1219904 → 0.121990; a model added in
    config is priced too."""
    server = await economy(FakeProvider([USAGE_1, USAGE_2]), pricing={
        "show_provider_cost": True,
        "models": {"gpt-realtime": {"audio_input": 30}}})
    body = await run_session(server, "gpt-realtime", 2)
    assert body["provider_cost_usd"] == 0.12199


async def test_model_added_in_config(economy):
    """A house model at $1 per 1M of every kind: 2000 + 360 tokens of usage 1
    → $0.00236."""
    prices = dict.fromkeys(("text_input", "cached_text_input", "audio_input", "cached_audio_input",
                            "text_output", "audio_output"), 1)
    server = await economy(FakeProvider([USAGE_1]), pricing={
        "show_provider_cost": True, "models": {"house-model": prices}})
    body = await run_session(server, "house-model", 1)
    assert body["provider_cost_usd"] == 0.00236


async def test_customers_do_not_see_the_cost_by_default(economy):
    server = await economy(FakeProvider([USAGE_1]))
    body = await run_session(server, "gpt-realtime", 1)
    assert "provider_cost_usd" not in body and "provider_cost_reason" not in body
    headers = {"Authorization": f"Bearer {server.admin_key}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/v1/sessions", headers=headers) as resp:
            (listed,) = (await resp.json())["data"]
    assert "provider_cost_usd" not in listed
    # the operator's record has it all the same: usage 1 on gpt-realtime
    # 200×4 + 1000×0.40 + 776×32 + 24×0.40 + 60×16 + 300×64 = 46201.6 → $0.046202
    assert (await server.store.get_session(body["id"])).provider_cost_usd == Decimal("0.046202")


async def test_sessions_of_a_lost_instance_get_their_cost(any_store):
    """A sweeper completing a lost instance's session from its checkpoint
    (``complete_orphans``) prices the checkpointed usage: 1000 audio output
    tokens of gpt-realtime-mini → 1000 × $20 / 1M = $0.02."""
    from voxgate.metering.verdict import VerdictPolicy
    from voxgate.models import Measurements, SessionRecord, load_catalog
    from voxgate.models.pricing import load_prices
    from voxgate.proxy.recovery import complete_orphans
    from voxgate.store.base import Orphan

    store = any_store
    account = await store.create_account(f"lost-{time.monotonic_ns()}@test", "free")
    project = await store.create_project(account.id, "p")
    now = time.time()
    record = SessionRecord(id="sess_lost", account_id=account.id, project_id=project.id,
                           transport="websocket", started_at=now - 30, model="gpt-realtime-mini",
                           measurements=Measurements(connected=True, connect_ms=90.0, duration_ms=20000.0,
                                                     audio_out_ms=8000.0, output_tokens=1000,
                                                     output_audio_tokens=1000, responses=1,
                                                     responses_completed=1))
    await store.open_session(record)
    await complete_orphans(store, load_catalog(), VerdictPolicy(), [
        Orphan(record.id, account.id, None, record, now - 5)], now, "instance x lost",
        prices=load_prices())
    got = await store.get_session(record.id)
    assert (got.status, got.provider_cost_usd) == ("completed", Decimal("0.020000"))


async def test_a_session_on_the_customers_own_key(economy):
    """BYOK: the project's own provider key → ``paid_by: "customer"``; the
    cost is computed all the same (usage 1 on gpt-realtime: $0.046202) and
    shown to the customer, whose money it is, without ``show_provider_cost``."""
    from cryptography.fernet import Fernet

    server = await economy(FakeProvider([USAGE_1]), upstream={
        "provider_key_secret": Fernet.generate_key().decode()})
    async with aiohttp.ClientSession() as http:
        async with http.patch(f"{server.url}/v1/projects/{server.project_id}",
                              json={"openai_api_key": "sk-proj-customer-own-key-0000009Zq7"},
                              headers={"Authorization": f"Bearer {server.admin_key}"}) as resp:
            assert resp.status == 200, await resp.text()
    body = await run_session(server, "gpt-realtime", 1)
    assert (body["paid_by"], body["provider_cost_usd"]) == ("customer", 0.046202)
