"""``POST /webhooks/stripe``: signature, staleness, malformed bodies,
unknown types and replays, each with the right status and no state change;
and the pure subscription → account mapping."""

from __future__ import annotations

import time

import orjson
import pytest

from tests.billing.conftest import eventually, post_event, sign, stripe_event
from voxgate.billing.events import plan_of_subscription, subscription_state
from voxgate.models import load_catalog


@pytest.fixture
async def linked(make_billing_server):
    """A server (Stripe unreachable: nothing here needs it) and an account
    linked to customer ``cus_T`` and subscription ``sub_T``."""
    server = await make_billing_server(api_base="http://127.0.0.1:9", plan="starter")
    await server.store.update_account(server.account_id, stripe_customer_id="cus_T",
                                      stripe_subscription_id="sub_T")
    return server


def failed_invoice() -> dict:
    return {"id": "in_T", "object": "invoice", "customer": "cus_T", "status": "open"}


async def _state(server):
    a = await server.store.get_account(server.account_id)
    return (a.plan_id, a.status, a.past_due_since)


async def _event_count(server) -> int:
    rows = await server.store.db.execute_fetchall("SELECT COUNT(*) FROM stripe_events")
    return rows[0][0]


async def test_payment_failed_then_replay_changes_nothing(linked, http):
    server = linked
    payload = stripe_event("invoice.payment_failed", failed_invoice(), "evt_fail_1")
    status, body = await post_event(http, server, payload)
    assert (status, body) == (200, {"received": True})

    async def past_due():
        state = await _state(server)
        return state if state[1] == "past_due" else None

    plan, status_, since = await eventually(past_due)
    assert plan == "starter" and since is not None
    # an operator fixes the account; the replayed event must not undo it
    await server.store.update_account(server.account_id, status="active", past_due_since=None)
    status, body = await post_event(http, server, payload)
    assert (status, body) == (200, {"received": True, "duplicate": True})
    await server.billing.process_events()
    assert await _state(server) == ("starter", "active", None)
    assert await _event_count(server) == 1


@pytest.mark.parametrize("case", ["wrong_secret", "tampered", "missing", "stale"])
async def test_bad_signatures_are_400(linked, http, case):
    server = linked
    payload = stripe_event("invoice.payment_failed", failed_invoice())
    signature = {
        "wrong_secret": sign(payload, secret="whsec_other"),
        "tampered": sign(payload.replace(b"cus_T", b"cus_X")),
        "missing": "",
        "stale": sign(payload, timestamp=int(time.time()) - 301),
    }[case]
    status, body = await post_event(http, server, payload, signature)
    assert status == 400
    assert body["error"]["code"] == "invalid_signature"
    await server.billing.process_events()
    assert await _state(server) == ("starter", "active", None)
    assert await _event_count(server) == 0


async def test_malformed_json_is_400(linked, http):
    server = linked
    for payload in (b"{not json", b"\xff\xfe", b'["a list"]', b'{"no": "id"}'):
        status, body = await post_event(http, server, payload)
        assert status == 400, payload
        assert body["error"]["code"] in ("invalid_json", "invalid_event")
    assert await _event_count(server) == 0


async def test_unknown_event_type_is_200_and_ignored(linked, http):
    server = linked
    payload = stripe_event("customer.tax_id.created", {"id": "txi_1", "customer": "cus_T"})
    status, body = await post_event(http, server, payload)
    assert (status, body) == (200, {"received": True, "ignored": True})
    assert await _state(server) == ("starter", "active", None)
    status, body = await post_event(http, server, payload)
    assert (status, body) == (200, {"received": True, "duplicate": True})


async def test_unconfigured_webhook_secret_is_503(make_billing_server, http):
    server = await make_billing_server(billing={"stripe_webhook_secret": None})
    payload = stripe_event("invoice.payment_failed", failed_invoice())
    status, body = await post_event(http, server, payload)
    assert status == 503 and body["error"]["code"] == "billing_not_configured"


async def test_event_failing_on_stripe_is_kept_and_retried(linked, http):
    """A subscription event needs Stripe (re-read); Stripe is down: the
    event is answered 200, kept unprocessed with its error, retried later."""
    server = linked
    payload = stripe_event("customer.subscription.updated",
                           {"id": "sub_T", "object": "subscription", "customer": "cus_T",
                            "status": "past_due"}, "evt_sub_1")
    status, _ = await post_event(http, server, payload)
    assert status == 200

    async def failed_once():
        info = await server.billing.db.event_status("evt_sub_1")
        return info if info["attempts"] >= 1 else None

    info = await eventually(failed_once)
    assert info["processed_at"] is None and "unavailable" in info["last_error"]
    assert await _state(server) == ("starter", "active", None)


# -- pure mapping -------------------------------------------------------------


CATALOG = load_catalog()  # free, starter, growth; legacy build/pro/agency


def _sub(status: str, **extra) -> dict:
    return {"id": "sub_1", "status": status, "customer": "cus_1", "items": {"data": [
        {"price": {"id": "price_1", "lookup_key": "voxgate_growth",
                   "recurring": {"usage_type": "licensed"}}}]}, **extra}


def test_plan_mapping_by_lookup_key_metadata_and_plan_id():
    assert plan_of_subscription(_sub("active"), CATALOG) == "growth"
    by_meta = {"items": {"data": [{"price": {"id": "price_9", "metadata": {
        "voxgate_plan": "starter"}}}]}}
    assert plan_of_subscription(by_meta, CATALOG) == "starter"
    localstripe = {"plan": {"id": "voxgate_starter"}, "items": {"data": [
        {"plan": {"id": "voxgate_starter", "metadata": {}}}]}}
    assert plan_of_subscription(localstripe, CATALOG) == "starter"
    legacy = {"items": {"data": [{"price": {"lookup_key": "voxgate_build"}}]}}
    assert plan_of_subscription(legacy, CATALOG) == "starter"
    metered_first = {"items": {"data": [
        {"price": {"lookup_key": "voxgate_starter_overage", "recurring": {"usage_type": "metered"}}},
        {"price": {"lookup_key": "voxgate_growth", "recurring": {"usage_type": "licensed"}}}]}}
    assert plan_of_subscription(metered_first, CATALOG) == "growth"
    assert plan_of_subscription({"items": {"data": [{"price": {"id": "x"}}]}}, CATALOG) is None


def test_subscription_state():
    now = time.time()
    s = subscription_state(_sub("active"), CATALOG, now)
    assert (s.plan_id, s.status, s.subscription_id) == ("growth", "active", "sub_1")
    s = subscription_state(_sub("trialing"), CATALOG, now)
    assert (s.plan_id, s.status) == ("growth", "active")
    s = subscription_state(_sub("past_due"), CATALOG, now)
    assert (s.plan_id, s.status, s.past_due) == (None, "past_due", True)
    s = subscription_state(_sub("canceled"), CATALOG, now)
    assert (s.plan_id, s.status, s.subscription_id) == ("free", "active", None)
    s = subscription_state(_sub("active", cancel_at_period_end=True,
                                current_period_end=now - 1), CATALOG, now)
    assert (s.plan_id, s.subscription_id) == ("free", None)
    s = subscription_state(_sub("active", cancel_at_period_end=True,
                                current_period_end=now + 86400), CATALOG, now)
    assert (s.plan_id, s.subscription_id) == ("growth", "sub_1")
    assert not subscription_state(_sub("incomplete"), CATALOG, now).change


def test_event_payload_helper_roundtrip():
    payload = stripe_event("x.y", {"id": "o"}, "evt_1")
    assert orjson.loads(payload)["id"] == "evt_1"


async def test_webhook_flood_from_one_address_is_throttled(make_billing_server, http):
    """The unauthenticated webhook route: a flood of unsigned requests from
    one address gets 429 with Retry-After before any signature work."""
    server = await make_billing_server(billing={"webhook_ip_limit_per_min": 5})
    statuses = []
    for _ in range(7):
        async with http.post(server.url + "/webhooks/stripe", data=b"{}",
                             headers={"Stripe-Signature": "t=1,v1=00"}) as resp:
            statuses.append(resp.status)
            retry_after = resp.headers.get("Retry-After")
    assert statuses[:5] == [400] * 5 and statuses[5:] == [429, 429], statuses
    assert retry_after is not None and int(retry_after) >= 1
