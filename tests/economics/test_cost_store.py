"""The provider cost on the session row (migration 0014), on SQLite and
PostgreSQL: written by ``complete_session`` in the completing transaction,
only while the row holds the measurements it was computed from."""

from __future__ import annotations

import time
from decimal import Decimal

from voxgate.models import Measurements, SessionRecord, Verdict
from voxgate.models.pricing import load_prices, session_cost

PRICES = load_prices()


def record_of(account_id: str, project_id: str, sid: str, audio_out_tokens: int,
              model: str = "gpt-realtime") -> SessionRecord:
    m = Measurements(connected=True, connect_ms=80.0, duration_ms=9000.0, audio_in_ms=6000.0,
                     audio_out_ms=3000.0, output_tokens=audio_out_tokens,
                     output_audio_tokens=audio_out_tokens, responses=1, responses_completed=1)
    now = time.time()
    return SessionRecord(id=sid, account_id=account_id, project_id=project_id, transport="websocket",
                         started_at=now - 9, model=model, ended_at=now, measurements=m)


def priced(record: SessionRecord) -> SessionRecord:
    cost = session_cost(PRICES, record.model, record.measurements)
    record.provider_cost_usd, record.provider_cost_reason = cost.usd, cost.reason
    return record


BILLABLE = Verdict(True, "billable", "test")


async def test_cost_written_and_read(any_store):
    store = any_store
    account = await store.create_account(f"c-{time.monotonic_ns()}@test", "free")
    project = await store.create_project(account.id, "p")
    # 1000 audio output tokens of gpt-realtime: 1000 × $64 / 1M = $0.064
    rec = priced(record_of(account.id, project.id, "sess_cost_1", 1000))
    await store.open_session(rec)
    assert (await store.get_session(rec.id)).provider_cost_usd is None
    await store.complete_session(rec, BILLABLE)
    got = await store.get_session(rec.id)
    assert (got.provider_cost_usd, got.provider_cost_reason) == (Decimal("0.064000"), None)
    assert got.to_api(provider_cost=True)["provider_cost_usd"] == 0.064
    assert "provider_cost_usd" not in got.to_api()
    listed = await store.list_sessions(account.id, limit=10)
    assert [s.provider_cost_usd for s in listed] == [Decimal("0.064000")]

    # a retried completion with other figures changes nothing
    again = priced(record_of(account.id, project.id, "sess_cost_1", 5))
    await store.complete_session(again, BILLABLE)
    assert (await store.get_session(rec.id)).provider_cost_usd == Decimal("0.064000")

    # unpriced: null with the reason, stored as such
    odd = priced(record_of(account.id, project.id, "sess_cost_2", 10, model="gpt-unheard-of"))
    await store.complete_session(odd, BILLABLE)
    got = await store.get_session(odd.id)
    assert got.provider_cost_usd is None
    assert got.provider_cost_reason == "the session's model 'gpt-unheard-of' is not in the price list"
    assert got.to_api(provider_cost=True)["provider_cost_reason"] == got.provider_cost_reason

    # a caller that computed no cost (no price list) leaves the columns empty
    bare = record_of(account.id, project.id, "sess_cost_3", 10)
    await store.complete_session(bare, BILLABLE)
    got = await store.get_session(bare.id)
    assert (got.provider_cost_usd, got.provider_cost_reason) == (None, None)
    assert got.provider_cost_note == "no provider cost was computed for this session"


async def test_final_record_replaces_a_provisional_cost(any_store):
    """A sweeper's provisional completion (from a checkpoint) is replaced by
    the owning instance's final record: its measurements, so its cost; a
    late provisional one after the final record leaves both."""
    store = any_store
    account = await store.create_account(f"p-{time.monotonic_ns()}@test", "free")
    project = await store.create_project(account.id, "p")
    checkpoint = priced(record_of(account.id, project.id, "sess_prov", 100))
    await store.open_session(checkpoint)
    await store.complete_session(checkpoint, BILLABLE, provisional=True)
    assert (await store.get_session("sess_prov")).provider_cost_usd == Decimal("0.006400")
    final = priced(record_of(account.id, project.id, "sess_prov", 2000))
    await store.complete_session(final, BILLABLE)
    assert (await store.get_session("sess_prov")).provider_cost_usd == Decimal("0.128000")
    late = priced(record_of(account.id, project.id, "sess_prov", 100))
    await store.complete_session(late, BILLABLE, provisional=True)
    assert (await store.get_session("sess_prov")).provider_cost_usd == Decimal("0.128000")


async def test_a_session_the_customer_paid_for(any_store):
    """BYOK: ``paid_by = "customer"`` is stored when the session opens and
    read back; its cost is computed all the same and shown to the customer
    (it is theirs), whatever ``show_provider_cost`` says."""
    store = any_store
    account = await store.create_account(f"byok-{time.monotonic_ns()}@test", "free")
    project = await store.create_project(account.id, "p")
    rec = priced(record_of(account.id, project.id, "sess_byok", 1000))
    rec.paid_by = "customer"
    await store.open_session(rec)
    await store.complete_session(rec, BILLABLE)
    got = await store.get_session(rec.id)
    assert (got.paid_by, got.provider_cost_usd) == ("customer", Decimal("0.064000"))
    body = got.to_api()
    assert (body["paid_by"], body["provider_cost_usd"]) == ("customer", 0.064)
    other = priced(record_of(account.id, project.id, "sess_ops", 1000))
    await store.open_session(other)
    await store.complete_session(other, BILLABLE)
    body = (await store.get_session(other.id)).to_api()
    assert body["paid_by"] == "operator" and "provider_cost_usd" not in body
