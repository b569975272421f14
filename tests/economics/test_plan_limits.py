"""Plans that cap cost (issue 21, item 4), the pure parts: a plan's
``max_session_s`` and ``models`` from the catalog and from enterprise
terms, the effective session limit, the ``session_expired`` and
``model_not_allowed`` events, and ``session_model`` refusing a model the
plan does not allow."""

from __future__ import annotations

import pytest

from voxgate.errors import ConfigError, InvalidRequest
from voxgate.models import Account, Principal, Project
from voxgate.models.enterprise import enterprise_plan, plan_terms
from voxgate.models.plans import (
    MAX_SESSION_REASON,
    Plan,
    fmt_limit_s,
    load_catalog,
    model_not_allowed_event,
    session_expired_event,
    update_model,
)
from voxgate.proxy.auth import session_model


def catalog_of(tmp_path, extra: str):
    path = tmp_path / "catalog.toml"
    path.write_text('default_plan = "free"\n[plans.free]\nsessions_included = 100\n' + extra)
    return load_catalog(path)


def test_catalog_keys(tmp_path):
    catalog = catalog_of(tmp_path, 'max_session_s = 6\nmodels = ["gpt-realtime-mini"]\n'
                                   '[plans.pro]\nsessions_included = 10\n')
    free, pro = catalog.get("free"), catalog.get("pro")
    assert (free.max_session_s, free.models) == (6.0, ("gpt-realtime-mini",))
    assert (pro.max_session_s, pro.models) == (None, ())
    assert free.allows_model("gpt-realtime-mini") and not free.allows_model("gpt-realtime")
    assert pro.allows_model("anything")


@pytest.mark.parametrize("extra, message", [
    ("max_session_s = 0\n", "max_session_s must be a number of seconds > 0"),
    ('max_session_s = "6"\n', "max_session_s must be a number of seconds > 0"),
    ('models = "gpt-realtime"\n', "models must be a list of model ids"),
    ('models = [""]\n', "models must be a list of model ids"),
])
def test_bad_catalog_keys(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        catalog_of(tmp_path, extra)


def test_effective_limit_is_the_shorter():
    assert Plan("p", "P", max_session_s=6).session_limit_s(3600.0) == 6.0
    assert Plan("p", "P", max_session_s=7200).session_limit_s(3600.0) == 3600.0
    assert Plan("p", "P").session_limit_s(3600.0) == 3600.0
    assert Plan("p", "P").session_limit_s(None) is None


def test_enterprise_terms_round_trip():
    plan = enterprise_plan("acct_1", {"sessions_included": 10, "max_session_s": 300,
                                      "models": ["gpt-realtime-mini", "gpt-realtime"]})
    assert (plan.max_session_s, plan.models) == (300.0, ("gpt-realtime-mini", "gpt-realtime"))
    assert enterprise_plan("acct_1", plan_terms(plan)) == plan
    with pytest.raises(ValueError, match="max_session_s"):
        enterprise_plan("acct_1", {"max_session_s": -1})


def test_session_expired_event_names_the_limit():
    assert session_expired_event(6) == {"type": "error", "error": {
        "type": "invalid_request_error", "code": "session_expired",
        "message": "Your session hit the maximum duration of 6 seconds.",
        "param": None, "event_id": None}}
    assert fmt_limit_s(1800) == "30 minutes"
    assert fmt_limit_s(60) == "1 minute"
    assert fmt_limit_s(90) == "90 seconds"
    assert fmt_limit_s(1) == "1 second"
    assert fmt_limit_s(1.5) == "1.5 seconds"
    assert MAX_SESSION_REASON == "max_session_s"


def test_session_update_asking_for_a_model_the_plan_refuses():
    plan = Plan("free", "Free", models=("gpt-realtime-mini",))
    update = {"type": "session.update", "event_id": "evt_7",
              "session": {"type": "realtime", "model": "gpt-realtime"}}
    assert update_model(update) == "gpt-realtime"
    assert update_model({"type": "session.update", "session": {"type": "realtime"}}) is None
    assert model_not_allowed_event("gpt-realtime", plan.models, "evt_7") == {"type": "error", "error": {
        "type": "invalid_request_error", "code": "model_not_allowed",
        "message": "model 'gpt-realtime' is not allowed for your plan; allowed: gpt-realtime-mini",
        "param": "session.model", "event_id": "evt_7"}}


def principal() -> Principal:
    account = Account("acct_1", "a@test", "free", 0.0)
    return Principal(account=account, project=Project("proj_1", "acct_1", "p", 0.0))


def test_session_model_refuses_a_model_outside_the_plan():
    p = principal()
    assert session_model(p, "gpt-realtime-mini", "gpt-realtime",
                         plan_models=("gpt-realtime-mini",)) == "gpt-realtime-mini"
    # no model asked for: the default unless the plan refuses it, then the plan's first
    assert session_model(p, None, "gpt-realtime", plan_models=("gpt-realtime-mini",)) == "gpt-realtime-mini"
    with pytest.raises(InvalidRequest) as err:
        session_model(p, "gpt-realtime", "gpt-realtime", plan_models=("gpt-realtime-mini",))
    assert err.value.code == "model_not_allowed"
    assert str(err.value) == "model 'gpt-realtime' is not allowed for your plan; allowed: gpt-realtime-mini"
