"""How the provider cost reads on a receipt and in the CSV export (pure):
the operator's figure, shown when asked (operators, ``show_provider_cost``)
and always for a session the customer paid for with its own key."""

from __future__ import annotations

from decimal import Decimal

from voxgate.models import SessionRecord
from voxgate.web import receipts
from voxgate.web.views import COST_COLUMNS, CSV_COLUMNS, _csv_row


def record(**kw) -> SessionRecord:
    return SessionRecord(id="sess_1", account_id="acct_1", project_id="proj_1", transport="websocket",
                         started_at=1_765_000_000.0, ended_at=1_765_000_010.0, status="completed",
                         model="gpt-realtime", **kw)


def test_receipt_row():
    priced = record(provider_cost_usd=Decimal("0.126438"))
    assert receipts.provider_cost_row(priced) == ("Provider cost", "$0.126438")
    unpriced = record(provider_cost_reason="the session's model 'x' is not in the price list")
    assert receipts.provider_cost_row(unpriced) == (
        "Provider cost", "unknown: the session's model 'x' is not in the price list")
    assert receipts.provider_cost_row(record()) == (
        "Provider cost", "unknown: no provider cost was computed for this session")
    assert receipts.fmt_usd(Decimal("1234.5")) == "$1,234.500000"


def test_receipt_shows_it_when_asked_or_paid_by_the_customer():
    priced = record(provider_cost_usd=Decimal("0.126438"))
    assert "Provider cost" not in dict(receipts.measurement_rows(priced))
    assert dict(receipts.measurement_rows(priced, provider_cost=True))["Provider cost"] == "$0.126438"
    byok = record(provider_cost_usd=Decimal("0.126438"), paid_by="customer")
    assert dict(receipts.measurement_rows(byok))["Provider cost"] == (
        "$0.126438 (paid with your own provider key)")


def test_csv_columns():
    priced = record(provider_cost_usd=Decimal("0.1"))
    assert len(_csv_row(priced, {})) == len(CSV_COLUMNS)
    row = _csv_row(priced, {}, cost=True)
    assert len(row) == len(CSV_COLUMNS) + len(COST_COLUMNS)
    assert row[-2:] == ["0.100000", ""]
    row = _csv_row(record(provider_cost_reason="no price"), {}, cost=True)
    assert row[-2:] == ["", "no price"]
