"""The pure rules of add-on packs and enterprise plans: graduated tiers
priced to the cent on a known month, the effective quota with packs, which
pack a session uses, pack expiry, and the catalog's ``[packs]``."""

from __future__ import annotations

import pytest

from voxgate.errors import ConfigError
from voxgate.models import load_catalog
from voxgate.models.enterprise import enterprise_plan, parse_tier, plan_for, plan_terms
from voxgate.models.packs import (
    PACK_LIFETIME_S,
    AccountPack,
    pack_balance,
    pack_expiry,
    pack_to_use,
    with_packs,
)
from voxgate.models.plans import Plan, Tier, graduated_cents

DAY = 86400.0
T0 = 1_780_000_000.0

# $500 a month, 10,000 sessions included, then graduated: the first 5,000
# charged sessions at 4¢, the next 15,000 at 3¢, the rest at 2¢.
TERMS = {"name": "Acme", "price_cents": 50000, "sessions_included": 10000,
         "concurrency": 200, "requests_per_minute": 20000, "projects": 50,
         "overage_cents": 2, "tiers": [[5000, 4], [20000, 3]]}


def pack(sessions: int, used: int = 0, bought: float = T0, pid: str = "pack_a") -> AccountPack:
    return AccountPack(pid, "acct_1", "small", sessions, used, 500, "checkout", f"cs_{pid}",
                       bought, pack_expiry(bought))


def test_enterprise_month_priced_to_the_cent():
    plan = enterprise_plan("acct_1", TERMS)
    assert plan.tiers == (Tier(5000, 4), Tier(20000, 3), Tier(None, 2))
    # a known month: 37,123 billable sessions, 500 of them paid by an add-on pack
    # charged = 37,123 − 10,000 − 500 = 26,623
    # = 5,000 × 4¢ + 15,000 × 3¢ + 6,623 × 2¢ = 200.00 + 450.00 + 132.46 = $782.46
    assert plan.overage_cost_cents(26623) == 78246
    assert plan.cost_cents(37123, pack_covered=500) == 50000 + 78246
    # edges: nothing beyond the included; exactly at a tier's top; one past it
    assert plan.cost_cents(10000) == 50000
    assert plan.cost_cents(15000) == 50000 + 5000 * 4
    assert plan.cost_cents(15001) == 50000 + 5000 * 4 + 3
    assert plan.cost_cents(30001) == 50000 + 5000 * 4 + 15000 * 3 + 2


def test_graduated_cents_and_its_refusals():
    tiers = (Tier(10, 5), Tier(None, 1))
    assert [graduated_cents(tiers, n) for n in (0, 1, 10, 11, 25)] == [0, 5, 50, 51, 65]
    with pytest.raises(ValueError, match="exceed the last tier"):
        graduated_cents((Tier(10, 5),), 11)


def test_enterprise_terms_round_trip_and_refusals():
    plan = enterprise_plan("acct_1", TERMS)
    assert (plan.id, plan.account_id, plan.name) == ("enterprise", "acct_1", "Acme")
    assert (plan.concurrency, plan.requests_per_minute, plan.projects) == (200, 20000, 50)
    assert enterprise_plan("acct_1", plan_terms(plan)) == plan
    assert parse_tier("inf:3") == [None, 3] and parse_tier(" 1000:5") == [1000, 5]
    for bad, message in (({"tiers": [[5, 1], [5, 2]], "overage_cents": 1}, "must be above 5"),
                         ({"tiers": [[5, 1]]}, "needs no up_to"),
                         ({"tiers": [[None, 1], [9, 2]]}, "only the last tier"),
                         ({"sessions_included": -1}, "whole number"),
                         ({"colour": "red"}, "unknown enterprise plan terms")):
        with pytest.raises(ValueError, match=message):
            enterprise_plan("acct_1", bad)
    with pytest.raises(ValueError, match="UP_TO:CENTS"):
        parse_tier("1000")


def test_plain_overage_enterprise_and_hard_cap():
    capped = enterprise_plan("acct_1", {"sessions_included": 100})
    assert capped.hard_cap and capped.cost_cents(500) == 0
    flat = enterprise_plan("acct_1", {"price_cents": 100, "sessions_included": 10,
                                      "overage_cents": 7})
    assert not flat.tiers and flat.cost_cents(13) == 100 + 3 * 7


def test_plan_for_resolves_enterprise_catalog_and_default():
    catalog = load_catalog()
    assert plan_for(catalog, "acct_1", "enterprise", TERMS).account_id == "acct_1"
    assert plan_for(catalog, "acct_1", "enterprise", None).id == catalog.default_plan
    assert plan_for(catalog, "acct_1", "enterprise", {"tiers": "x"}).id == catalog.default_plan
    assert plan_for(catalog, "acct_1", "build", None).id == "starter"  # legacy
    assert plan_for(catalog, "acct_1", "starter", TERMS).id == "starter"


def test_packs_raise_the_quota_and_are_used_after_the_plan():
    plan = Plan("tiny", "Tiny", sessions_included=2)
    packs = [pack(5, used=2), pack(3, bought=T0 + DAY, pid="pack_b")]
    balance = pack_balance(packs, used_this_period=2, now=T0 + 2 * DAY)
    assert (balance.remaining, balance.used_this_period, balance.sessions) == (6, 2, 8)
    assert balance.expires_at == T0 + PACK_LIFETIME_S
    effective = with_packs(plan, balance)
    assert (effective.sessions_included, effective.pack_sessions) == (10, 8)
    assert effective.plan_sessions_included == 2 and effective.hard_cap
    # the pack that expires first is used first, then the next one
    assert pack_to_use(packs, T0 + 2 * DAY).id == "pack_a"
    assert pack_to_use([pack(5, used=5), packs[1]], T0 + 2 * DAY).id == "pack_b"
    # unlimited plans and no packs: unchanged
    assert with_packs(Plan("u", "U"), balance) == Plan("u", "U")
    assert with_packs(plan, pack_balance([], 0, T0)) is plan


def test_pack_expires_thirty_days_after_purchase():
    p = pack(5)
    assert p.expires_at == T0 + 30 * DAY
    assert p.live(T0) and p.live(T0 + 30 * DAY - 1)
    assert not p.live(T0 + 30 * DAY) and not p.live(T0 - 1)
    late = pack_balance([p], used_this_period=1, now=T0 + 30 * DAY)
    # sessions it paid for this period still count; what was left is gone
    assert (late.remaining, late.sessions, late.expires_at) == (0, 1, None)
    assert pack_to_use([p], T0 + 30 * DAY) is None


def test_charges_skip_sessions_covered_by_packs():
    payg = Plan("payg", "PAYG", sessions_included=0, overage_cents=10)
    assert payg.cost_cents(5, pack_covered=2) == 30
    pro = with_packs(Plan("pro", "Pro", price_cents=2900, sessions_included=3, overage_cents=7),
                     pack_balance([pack(2)], 0, T0))
    # the effective plan prices the month from its own 3 included sessions
    assert pro.cost_cents(6, pack_covered=2) == 2900 + 7


def test_catalog_packs(tmp_path):
    catalog = load_catalog()
    assert catalog.packs["sessions_1000"].sessions == 1000
    bad = tmp_path / "bad.toml"
    for text, message in (
        ('[plans.free]\nname = "F"\n[packs.p]\nsessions = 0\nprice_cents = 5\n', "sessions"),
        ('[plans.free]\nname = "F"\n[packs.p]\nsessions = 5\nprice_cents = 5\ncolour = 1\n',
         "unknown fields"),
        ('[plans.enterprise]\nname = "E"\n', "reserved"),
    ):
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_catalog(bad)


def test_monthly_summary_does_not_charge_pack_sessions():
    from voxgate.billing.notify import usage_summary
    from voxgate.store.base import MonthlyUsage

    pro = Plan("pro", "Pro", price_cents=2900, sessions_included=3, overage_cents=7)
    summary = usage_summary(pro, MonthlyUsage("acct_1", "2026-05", 9, 8), pack_covered=2)
    assert (summary.overage_sessions, summary.cost_cents) == (3, 2900 + 3 * 7)
