"""Enterprise plans: an operator gives one account its own plan (the admin
CLI, the ``/admin`` form), it syncs to Stripe as that account's own prices
(the overage as graduated tiers, against the in-memory fake of Prices and
Meters of ``test_sync_prices``), admission follows its terms, and it shows
on that account's billing page only."""

from __future__ import annotations

import json

import pytest

from tests.billing.test_sync_prices import FakeStripe
from tests.web.conftest import WebClient
from voxgate.billing.addons import Addons
from voxgate.billing.db import BillingDB
from voxgate.cli import main
from voxgate.errors import InvalidRequest
from voxgate.web.auth import create_operator
from voxgate.web.state import WEB

TERMS = {"name": "Acme", "price_cents": 50000, "sessions_included": 10000,
         "concurrency": 200, "requests_per_minute": 20000, "projects": 50,
         "overage_cents": 2, "tiers": [[5000, 4], [20000, 3]]}


@pytest.fixture
async def fake_stripe():
    fake = FakeStripe()
    await fake.start()
    yield fake
    await fake.stop()


def by_key(fake: FakeStripe) -> dict:
    return {p["lookup_key"]: p for p in fake.prices.values() if p["lookup_key"]}


async def test_enterprise_plan_syncs_as_the_accounts_own_graduated_price(fake_stripe,
                                                                        make_billing_server):
    server = await make_billing_server(api_base=fake_stripe.url)
    svc = server.billing
    acct = server.account_id
    plan, report = await svc.set_enterprise_plan(acct, TERMS, "ops@example.com")
    assert sum("created" in line for line in report) == 1 + 1 + 2  # meter, product, prices
    [product] = [p for p in fake_stripe.products.values()
                 if p["metadata"].get("voxgate_account") == acct]
    assert product["metadata"] == {"voxgate_plan": "enterprise", "voxgate_account": acct}
    assert product["name"] == f"voxgate Acme ({acct})"
    prices = by_key(fake_stripe)
    flat = prices[f"voxgate_enterprise_{acct}"]
    assert (flat["unit_amount"], flat["recurring"]["usage_type"]) == (50000, "licensed")
    overage = prices[f"voxgate_enterprise_{acct}_overage"]
    meter = next(iter(fake_stripe.meters.values()))
    assert (overage["billing_scheme"], overage["tiers_mode"], overage["unit_amount"]) == \
        ("tiered", "graduated", None)
    assert overage["tiers"] == [{"up_to": 5000, "unit_amount": 4},
                                {"up_to": 20000, "unit_amount": 3},
                                {"up_to": None, "unit_amount": 2}]  # sent as up_to=inf
    assert overage["recurring"] == {"interval": "month", "usage_type": "metered",
                                    "meter": meter["id"]}

    # found again (tiers read with expand[]=data.tiers): nothing new
    _, again = await svc.set_enterprise_plan(acct, TERMS, "ops@example.com")
    assert not any("created" in line for line in again), again
    # new tiers: a new price takes the lookup key over, the old one is archived
    _, changed = await svc.set_enterprise_plan(acct, {**TERMS, "tiers": [[5000, 5]]},
                                               "ops@example.com")
    assert [line for line in changed if "replacing" in line] == [
        f"price {by_key(fake_stripe)[f'voxgate_enterprise_{acct}_overage']['id']} "
        f"(voxgate_enterprise_{acct}_overage): created, replacing {overage['id']}"]
    assert fake_stripe.prices[overage["id"]]["active"] is False

    # checkout for the account's own plan uses its own prices
    account = await server.store.get_account(acct)
    assert account.plan_id == "enterprise"
    await svc.checkout_url(account, "enterprise")
    live = by_key(fake_stripe)
    assert fake_stripe.checkouts[-1]["line_items"] == {
        "0": {"price": live[f"voxgate_enterprise_{acct}"]["id"], "quantity": "1"},
        "1": {"price": live[f"voxgate_enterprise_{acct}_overage"]["id"]}}
    # another account has no enterprise plan to check out
    other, _, _ = await server.new_account("free")
    with pytest.raises(InvalidRequest) as refused:
        await svc.checkout_url(other, "enterprise")
    assert refused.value.code == "unknown_plan"

    # admission follows the terms
    effective = await server.gateway.account_plan(account)
    assert (effective.sessions_included, effective.concurrency, effective.requests_per_minute,
            effective.projects) == (10000, 200, 20000, 50)
    actions = [a["action"] for a in await svc.audit_log(acct)]
    assert "enterprise_plan_set" in actions and "enterprise_plan_synced" in actions


async def test_set_enterprise_from_the_command_line(fake_stripe, tmp_path, capsys):
    """The command runs in a thread (its own event loop) while the fake
    Stripe serves on the test's loop."""
    import asyncio

    from voxgate.store.sql import SQLiteStore

    async def cli(*args: str) -> int:
        return await asyncio.to_thread(main, ["billing", "--config", str(config), *args])

    config = tmp_path / "voxgate.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[billing]\n'
                      f'stripe_secret_key = "sk_test_x"\napi_base = "{fake_stripe.url}"\n')

    async def seed() -> str:
        async with SQLiteStore(tmp_path / "data" / "voxgate.db") as store:
            return (await store.create_account("big@example.com", "starter")).id

    acct = await seed()
    assert await cli("set-enterprise", acct, "--name", "Big", "--price-cents", "100000",
                     "--sessions-included", "50000", "--concurrency", "500",
                     "--tier", "10000:4", "--tier", "inf:2") == 0
    out = capsys.readouterr()
    terms = json.loads(out.out)
    assert (terms["plan"], terms["name"], terms["tiers"]) == \
        ("enterprise", "Big", [[10000, 4], [None, 2]])
    assert f"(voxgate_enterprise_{acct}_overage): created" in out.err
    assert by_key(fake_stripe)[f"voxgate_enterprise_{acct}_overage"]["tiers"][-1] == \
        {"up_to": None, "unit_amount": 2}
    assert await cli("set-enterprise", acct, "--tier", "10000:4") == 2
    assert "needs no up_to" in capsys.readouterr().err
    # sync finds it again with the catalog
    assert await cli("sync") == 0
    assert f"(voxgate_enterprise_{acct}_overage): unchanged" in capsys.readouterr().out


async def test_enterprise_plan_shows_on_its_accounts_billing_page_only(make_server,
                                                                     billing_catalog):
    server = await make_server("free", catalog=str(billing_catalog))  # every plugin, the web too
    state = server.app[WEB]
    big, other = WebClient(server.url), WebClient(server.url)
    ops = WebClient(server.url)
    try:
        await big.signup("big@example.com")
        await other.signup("small@example.com")
        await create_operator(server.store, state.db, state.catalog, "ops@example.com",
                              "operator password")
        assert await ops.signin("ops@example.com", "operator password") == 303
        await ops.enroll_2fa()
        status, text, _ = await ops.get("/admin")
        assert status == 200 and 'action="/admin/enterprise"' in text
        status, _, resp = await ops.post("/admin/enterprise", {
            "account": "big@example.com", "name": "Acme", "price_cents": "50000",
            "sessions_included": "10000", "concurrency": "200", "requests_per_minute": "20000",
            "projects": "50", "overage_cents": "2", "tiers": "5000:4, 20000:3"})
        assert status == 303 and resp.headers["Location"] == "/admin?notice=enterprise-set#addons"
        assert "Enterprise plan set." in (await ops.get("/admin?notice=enterprise-set"))[1]
        status, text, _ = await ops.post("/admin/enterprise", {"account": "big@example.com",
                                                               "tiers": "5000:4"})
        assert status == 400 and "needs no up_to" in text
        status, _, _ = await ops.post("/admin/packs", {"account": "small@example.com",
                                                       "pack": "small"})
        assert status == 303

        status, text, _ = await big.get("/billing")
        assert status == 200 and "Your enterprise plan" in text and "Acme" in text
        assert "<td>1 – 5,000</td><td>$0.04</td>" in text
        assert "<td>5,001 – 20,000</td><td>$0.03</td>" in text
        assert "<td>20,001 and up</td><td>$0.02</td>" in text
        status, text, _ = await big.get("/dashboard")
        assert status == 200 and "Acme plan" in text

        status, text, _ = await other.get("/billing")
        assert status == 200 and "enterprise" not in text.lower() and "Acme" not in text
        assert "2</strong> of 2 sessions left" in text  # the pack the operator granted
        status, text, _ = await other.get("/dashboard")
        assert "Add-on packs: 2 sessions left" in text
        for client in (big, other):
            status, text, _ = await client.get("/pricing")
            assert status == 200 and "Acme" not in text and "enterprise" not in text.lower()
    finally:
        for client in (big, other, ops):
            await client.close()
    big_account = await server.store.get_account_by_email("big@example.com")
    addons = Addons(server.store, BillingDB(server.store), server.gateway.catalog)
    assert [p.account_id for p in await addons.enterprise_plans()] == [big_account.id]
