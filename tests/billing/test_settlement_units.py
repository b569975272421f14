"""The pure parts of settlement: invoice-item parameters, period bounds,
backoff."""

from __future__ import annotations

import calendar

from voxgate.billing.db import InvoiceSettlement, backoff_s
from voxgate.billing.settlement import invoice_item_params, period_bounds


def test_invoice_item_params_amount_is_quantity_times_unit():
    s = InvoiceSettlement(id="voxgate-ii-acct_1-2026-01-1", account_id="acct_1",
                          period="2026-01", seq=1, quantity=12, unit_cents=7,
                          amount_cents=84, status="pending", invoice_item_id=None, attempts=0,
                          next_attempt_at=0.0, last_error=None)
    assert invoice_item_params(s, "cus_1", "usd", "Pro") == {
        "customer": "cus_1",
        "amount": 84,
        "currency": "usd",
        "description": "voxgate Pro: 12 billable session(s) × 0.07 USD (2026-01)",
        "metadata": {
            "voxgate_account": "acct_1",
            "voxgate_period": "2026-01",
            "voxgate_quantity": "12",
            "voxgate_unit_cents": "7",
            "voxgate_settlement": "voxgate-ii-acct_1-2026-01-1",
        },
    }


def test_period_bounds():
    assert period_bounds("2026-01") == (calendar.timegm((2026, 1, 1, 0, 0, 0)),
                                        calendar.timegm((2026, 2, 1, 0, 0, 0)))
    assert period_bounds("2025-12")[1] == calendar.timegm((2026, 1, 1, 0, 0, 0))


def test_backoff_doubles_and_caps():
    assert [backoff_s(n, 5.0, 60.0) for n in range(6)] == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    assert backoff_s(10**6, 1.0, 3600.0) == 3600.0
