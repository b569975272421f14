"""The billing page against billing's ``app[BILLING]`` interface: a small
stand-in service records the calls; with Stripe unconfigured the page says
so and the buttons are disabled."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

from voxgate.billing.service import BILLING


class StandInBilling:
    """``checkout_url``, ``portal_url``, ``invoices`` as billing exposes them."""

    def __init__(self, fail: bool = False) -> None:
        self.api = SimpleNamespace(configured=True)
        self.calls: list[tuple] = []
        self.fail = fail

    async def checkout_url(self, account, plan_id):
        self.calls.append(("checkout", account.id, plan_id))
        if self.fail:
            raise RuntimeError("stripe is down")
        return f"https://checkout.example/{plan_id}"

    async def portal_url(self, account):
        self.calls.append(("portal", account.id))
        return "https://portal.example/session"

    async def invoices(self, account):
        if self.fail:
            raise RuntimeError("stripe is down")
        return [{"id": "in_1", "number": "VX-0001", "status": "paid", "amount_due": 2900,
                 "amount_paid": 2900, "currency": "usd", "created": 1760000000,
                 "hosted_invoice_url": "https://invoice.example/in_1"}]


def install(server, service) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server.app[BILLING] = service


async def test_unconfigured_billing_disables_the_buttons(make_server, clients):
    server = await make_server()
    c = clients(server)
    await c.signup("nobill@example.com")
    status, text, _ = await c.get("/billing")
    assert status == 200 and "Billing not configured" in text
    assert text.count("disabled>") >= 3  # manage + each plan
    status, text, _ = await c.post("/billing", {"action": "upgrade", "plan": "starter"})
    assert status == 503 and "Billing is not configured." in text


async def test_upgrade_manage_and_invoices(make_server, clients):
    server = await make_server()
    service = StandInBilling()
    install(server, service)
    c = clients(server)
    await c.signup("bill@example.com")
    account = await server.store.get_account_by_email("bill@example.com")
    status, text, _ = await c.get("/billing")
    assert status == 200 and "Billing not configured" not in text
    assert "VX-0001" in text and "$29" in text and "https://invoice.example/in_1" in text
    assert "Tiny" in text
    status, _, resp = await c.post("/billing", {"action": "upgrade", "plan": "growth"})
    assert (status, resp.headers["Location"]) == (303, "https://checkout.example/growth")
    status, _, resp = await c.post("/billing", {"action": "manage"})
    assert (status, resp.headers["Location"]) == (303, "https://portal.example/session")
    assert service.calls == [("checkout", account.id, "growth"), ("portal", account.id)]
    status, text, _ = await c.post("/billing", {"action": "upgrade", "plan": "nope"})
    assert status == 400 and "Unknown plan." in text
    status, text, _ = await c.get("/billing?checkout=success")
    assert "Thank you" in text


async def test_billing_errors_are_shown(make_server, clients):
    server = await make_server()
    install(server, StandInBilling(fail=True))
    c = clients(server)
    await c.signup("down@example.com")
    status, text, _ = await c.get("/billing")
    assert status == 200 and "invoices unavailable: stripe is down" in text
    status, text, _ = await c.post("/billing", {"action": "upgrade", "plan": "starter"})
    assert status == 502 and "Billing error: stripe is down" in text
