"""The admission decision (voxgate.metering.rules.decide_admission), fed values directly:
every check, its order, its error code and message."""

from __future__ import annotations

import pytest

from voxgate.errors import ConcurrencyLimited, PermissionDenied, QuotaExceeded, RateLimited
from voxgate.metering.rules import Admit, Ask, Bounds, Counters, Refuse, bounds, decide_admission
from voxgate.models import Plan
from voxgate.models.packs import PackBalance, with_packs

CAPPED = Plan(id="starter", name="Starter", sessions_included=10, concurrency=2, projects=1,
              requests_per_minute=60)
OVERAGE = Plan(id="pro", name="Pro", sessions_included=10, overage_cents=7, concurrency=5)
UNLIMITED = Plan(id="flat", name="Flat")


def refusal(decision) -> Exception:
    assert isinstance(decision, Refuse), decision
    return decision.error


def test_bounds_follow_the_plan():
    assert bounds(CAPPED) == Bounds(max_in_flight=2, max_sessions=10)
    assert bounds(OVERAGE) == Bounds(max_in_flight=5, max_sessions=None)  # overage: no cap
    assert bounds(UNLIMITED) == Bounds(None, None)
    assert decide_admission(Ask.SESSION, CAPPED, "active", Counters(8, 1)) == Admit(bounds(CAPPED))


def test_sessions_reserve_the_quota_while_in_flight():
    err = refusal(decide_admission(Ask.SESSION, CAPPED, "active", Counters(9, 1)))
    assert isinstance(err, QuotaExceeded) and (err.status, err.code) == (429, "insufficient_quota")
    assert err.message == ("monthly session quota of the Starter plan is used up (9 billable, "
                           "1 in progress, 10 included); upgrade to continue")
    assert isinstance(decide_admission(Ask.SESSION, OVERAGE, "active", Counters(10_000, 0)), Admit)


def test_concurrency_is_checked_before_the_quota():
    err = refusal(decide_admission(Ask.SESSION, CAPPED, "active", Counters(10, 2)))
    assert isinstance(err, ConcurrencyLimited) and err.code == "concurrency_limit_exceeded"
    assert err.message == "the Starter plan allows 2 simultaneous sessions; end one or upgrade"
    one = Plan(id="o", name="One", concurrency=1)
    assert refusal(decide_admission(Ask.SESSION, one, "active", Counters(0, 1))).message == \
        "the One plan allows 1 simultaneous session; end one or upgrade"


def test_a_mint_takes_no_slot_but_needs_a_session_left():
    assert isinstance(decide_admission(Ask.MINT, CAPPED, "active", Counters(0, 2)), Admit)  # concurrency full
    assert isinstance(refusal(decide_admission(Ask.MINT, CAPPED, "active", Counters(8, 2))), QuotaExceeded)


def test_a_closed_account_and_an_empty_bucket_come_first():
    err = refusal(decide_admission(Ask.SESSION, CAPPED, "canceled", Counters(0, 0), rate_wait_s=3.0))
    assert isinstance(err, PermissionDenied) and err.message == "this account is closed"
    err = refusal(decide_admission(Ask.MINT, CAPPED, "past_due", Counters(10, 2), rate_wait_s=2.5))
    assert isinstance(err, RateLimited) and err.retry_after_s == 2.5
    assert err.message == ("rate limit of 60 requests per minute reached for this API key; "
                           "retry in 2.5 s")


def test_the_project_limit():
    assert isinstance(decide_admission(Ask.PROJECT, CAPPED, "active", Counters(10, 2, projects=0)), Admit)
    err = refusal(decide_admission(Ask.PROJECT, CAPPED, "active", Counters(projects=1)))
    assert (err.status, err.code) == (403, "project_limit_reached")
    assert err.message == "The Starter plan allows 1 project: upgrade for more."
    assert isinstance(decide_admission(Ask.PROJECT, UNLIMITED, "active", Counters(projects=99)), Admit)


@pytest.mark.parametrize("used, admitted", [(14, True), (15, False)])
def test_pack_sessions_count_in_the_quota(used, admitted):
    plan = with_packs(CAPPED, PackBalance(used_this_period=2, remaining=3, expires_at=None, live=()))
    assert plan.sessions_included == 15
    assert isinstance(decide_admission(Ask.SESSION, plan, "active", Counters(used, 0)), Admit) is admitted
