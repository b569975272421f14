"""The dashboard's settings pages of issue 21, through the real forms of a
real server on loopback: the webhook endpoint (``/account/webhook``: set,
secret shown once, test event delivered signed to a loopback receiver,
deliveries listed, resend, remove), a project's own OpenAI key on
``/projects`` (only its last 4 characters shown; the key in no page, export
or log line; the form absent when BYOK is disabled) and the provider spend
limit (the operator's ``/admin`` form, the customer's view on ``/billing``)."""

from __future__ import annotations

import logging
import re
import time
from decimal import Decimal

import orjson
import pytest
from cryptography.fernet import Fernet

from tests.billing.conftest import eventually
from tests.billing.test_session_webhook import Receiver
from tests.web.conftest import account_of, add_session
from voxgate.billing.notify import SIGNATURE_HEADER, verify_signature
from voxgate.billing.service import BILLING
from voxgate.web.auth import create_operator
from voxgate.web.state import WEB

FAST_OUTBOX = {"dev_mode": True,  # a loopback receiver
               "smtp": {"send_interval_s": 0.1},
               "billing": {"retry_base_s": 0.1, "retry_max_s": 0.5}}
SECRET_RE = re.compile(r'id="new-secret" class="mono" readonly value="(whsec_[^"]+)"')
CUSTOMER_KEY = "sk-proj-Dashboard0wnKey-" + "q" * 24 + "W7x9"


@pytest.fixture
async def receiver():
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


async def test_webhook_page_end_to_end(make_server, clients, receiver):
    server = await make_server(**FAST_OUTBOX)
    svc = server.app[BILLING]
    user = clients(server)
    await user.signup("hooks@example.com", "hooks password 123")
    account = await account_of(server, "hooks@example.com")
    status, text, _ = await user.get("/account/webhook")
    assert status == 200 and 'id="no-endpoint"' in text and 'href="/account/webhook"' in text
    assert 'value="session.completed" checked' in text  # the default choice
    # bad input is shown on the form, nothing is set
    status, text, _ = await user.post("/account/webhook", {"url": receiver.url})
    assert status == 400 and "Choose at least one event type." in text
    status, text, _ = await user.post("/account/webhook", {"url": "not a url",
                                                           "events": "session.completed"})
    assert status == 400 and "must be an https URL" in text and 'value="not a url"' in text
    status, text, _ = await user.post("/account/webhook", {"url": receiver.url,
                                                           "events": "session.nope"})
    assert status == 400 and "unknown event type" in text
    assert await svc.db.webhook_endpoint(account.id) is None
    # set: the signing secret is on this response only
    form = [("csrf_token", user.csrf), ("url", receiver.url),
            ("events", "session.completed"), ("events", "quota_warning")]
    async with user.http.post(server.url + "/account/webhook", data=form,
                              allow_redirects=False) as resp:
        status, text = resp.status, await resp.text()
    assert status == 200 and "shown only once" in text, text
    secret = SECRET_RE.search(text).group(1)
    endpoint = await svc.db.webhook_endpoint(account.id)
    assert endpoint.secret == secret and endpoint.url == receiver.url
    assert endpoint.events == ("session.completed", "quota_warning")
    status, text, _ = await user.get("/account/webhook")
    assert status == 200 and secret not in text and "whsec_" not in text
    assert f'id="endpoint-url">{receiver.url}<' in text
    assert "session.completed, quota_warning" in text
    # "Send test event": queued, delivered signed, listed
    status, _, resp = await user.post("/account/webhook/test")
    assert status == 303 and resp.headers["Location"] == "/account/webhook?notice=test-queued"
    await eventually(lambda: _got(receiver, 1))
    headers, body = receiver.got[0]
    assert verify_signature(secret, body, headers[SIGNATURE_HEADER])
    event = orjson.loads(body)
    assert event["type"] == "webhook.test" and event["data"]["url"] == receiver.url
    [item] = await svc.db.list_webhooks(account.id)
    await eventually(lambda: _delivered(svc, account.id))
    status, text, _ = await user.get("/account/webhook?notice=test-queued")
    assert "Test event queued" in text
    row = re.search(rf'<tr data-delivery="{item.id}">(.*?)</tr>', text, re.S).group(1)
    assert event["id"] in row and "webhook.test" in row and ">delivered<" in row
    assert f'action="/account/webhook/deliveries/{item.id}/resend"' in row
    # resend: the same event again
    status, _, resp = await user.post(f"/account/webhook/deliveries/{item.id}/resend")
    assert status == 303 and resp.headers["Location"] == "/account/webhook?notice=resent"
    await eventually(lambda: _got(receiver, 2))
    assert [e["id"] for e in receiver.events()] == [event["id"], event["id"]]
    # another account cannot resend it; a bad id is a 404 too
    other = clients(server)
    await other.signup("other-hooks@example.com", "other password 123")
    status, _, _ = await other.post(f"/account/webhook/deliveries/{item.id}/resend")
    assert status == 404
    status, _, _ = await user.post("/account/webhook/deliveries/x1/resend")
    assert status == 404
    status, _, _ = await other.post("/account/webhook/test")  # no endpoint of its own
    assert status == 400
    # forms need the CSRF token
    status, _, _ = await user.post("/account/webhook/test", {"csrf_token": "forged"})
    assert status == 403
    # remove
    status, _, resp = await user.post("/account/webhook/delete")
    assert status == 303 and resp.headers["Location"] == "/account/webhook?notice=removed"
    assert await svc.db.webhook_endpoint(account.id) is None
    status, text, _ = await user.get("/account/webhook?notice=removed")
    assert 'id="no-endpoint"' in text and "Webhook endpoint removed" in text
    actions = [e.action for e in await server.app[WEB].db.audit_entries()]
    assert "webhook_set" in actions and "webhook_removed" in actions


async def _got(receiver: Receiver, n: int) -> bool:
    return len(receiver.got) >= n


async def _delivered(svc, account_id: str) -> bool:
    return all(i.delivered_at is not None for i in await svc.db.list_webhooks(account_id))


async def test_webhook_form_refuses_unsafe_urls(make_server, clients):
    server = await make_server()  # not dev_mode: https and public addresses only
    user = clients(server)
    await user.signup("unsafe@example.com", "unsafe password 123")
    for url, words in (("http://example.com/hook", "must be an https URL"),
                       ("https://127.0.0.1/hook", "public addresses only")):
        status, text, _ = await user.post("/account/webhook", {"url": url,
                                                               "events": "session.completed"})
        assert status == 400 and words in text, text
    account = await account_of(server, "unsafe@example.com")
    assert await server.app[BILLING].db.webhook_endpoint(account.id) is None


async def test_project_provider_key_form(make_server, clients, caplog):
    caplog.set_level(logging.DEBUG)
    server = await make_server(upstream={"provider_key_secret": Fernet.generate_key().decode()})
    user = clients(server)
    await user.signup("byok@example.com", "byok password 123")
    account = await account_of(server, "byok@example.com")
    status, _, _ = await user.post("/projects", {"name": "voice app"})
    assert status == 303
    [project] = await server.store.list_projects(account.id)
    status, text, _ = await user.get("/projects")
    assert f'action="/projects/{project.id}/provider-key"' in text
    assert "uses the server's OpenAI key" in text or "use the server's OpenAI key" in text
    # a malformed key is refused on the form, and not echoed back
    status, text, _ = await user.post(f"/projects/{project.id}/provider-key",
                                      {"action": "set", "openai_api_key": "sk-short"})
    assert status == 400 and "The key must be" in text and "sk-short" not in text
    status, _, resp = await user.post(f"/projects/{project.id}/provider-key",
                                      {"action": "set", "openai_api_key": CUSTOMER_KEY})
    assert status == 303 and resp.headers["Location"] == "/projects?notice=provider-key-saved"
    stored = await server.store.get_project(project.id)
    assert stored.provider_key_last4 == "W7x9" and CUSTOMER_KEY not in stored.provider_key_sealed
    assert server.gateway.provider_keys.key_of(stored) == CUSTOMER_KEY
    status, text, _ = await user.get("/projects?notice=provider-key-saved")
    assert status == 200 and ">…W7x9<" in text and "Replace key" in text
    # another account's project is a 404
    other = clients(server)
    await other.signup("byok-other@example.com", "other password 123")
    status, _, _ = await other.post(f"/projects/{project.id}/provider-key",
                                    {"action": "set", "openai_api_key": CUSTOMER_KEY[::-1]})
    assert status == 404
    # the key is in no page, export, API answer, audit entry or log line
    await add_session(server.store, account.id, project.id)
    pages = ["/dashboard", "/sessions", "/sessions.csv", "/usage.csv", "/projects", "/billing",
             "/pricing", "/simulator", "/account/webhook", "/account/2fa",
             f"/v1/projects/{project.id}", "/v1/sessions", "/billing/usage"]
    for path in pages:
        status, text, _ = await user.get(path)
        assert status == 200, (path, status)
        assert CUSTOMER_KEY not in text and CUSTOMER_KEY[:-4] not in text, path
    for entry in await server.app[WEB].db.audit_entries():
        assert CUSTOMER_KEY not in orjson.dumps(entry.detail).decode()
    assert CUSTOMER_KEY not in caplog.text and CUSTOMER_KEY[:-4] not in caplog.text
    # remove
    status, _, resp = await user.post(f"/projects/{project.id}/provider-key", {"action": "remove"})
    assert status == 303 and resp.headers["Location"] == "/projects?notice=provider-key-removed"
    stored = await server.store.get_project(project.id)
    assert stored.provider_key_sealed is None and stored.provider_key_last4 is None
    status, text, _ = await user.get("/projects?notice=provider-key-removed")
    assert "W7x9" not in text and "use the server's OpenAI key" in text


async def test_provider_key_form_when_byok_is_disabled(make_server, clients):
    server = await make_server()  # no upstream.provider_key_secret
    user = clients(server)
    await user.signup("nobyok@example.com", "nobyok password 123")
    account = await account_of(server, "nobyok@example.com")
    project = await server.store.create_project(account.id, "p")
    status, text, _ = await user.get("/projects")
    assert status == 200 and "data-byok-disabled" in text and 'name="openai_api_key"' not in text
    status, text, _ = await user.post(f"/projects/{project.id}/provider-key",
                                      {"action": "set", "openai_api_key": CUSTOMER_KEY})
    assert status == 403 and "customer provider keys are disabled on this server" in text
    assert CUSTOMER_KEY not in text
    assert (await server.store.get_project(project.id)).provider_key_sealed is None


async def test_spend_limit_operator_form_and_customer_view(make_server, clients):
    server = await make_server()
    state = server.app[WEB]
    await create_operator(server.store, state.db, state.catalog, "ops@example.com",
                          "operator password")
    customer = clients(server)
    await customer.signup("spender@example.com", "spender password 123")
    account = await account_of(server, "spender@example.com")
    project = await server.store.create_project(account.id, "p")
    session_id = await add_session(server.store, account.id, project.id, started_at=time.time() - 30)
    await server.store.db.execute("UPDATE sessions SET provider_cost_micros = ? WHERE id = ?",
                                  (500_000, session_id))  # $0.50 of provider cost this month
    status, text, _ = await customer.get("/billing")
    assert status == 200 and 'id="spend-limit"' not in text  # no limit: nothing to show
    ops = clients(server)
    assert await ops.signin("ops@example.com", "operator password") == 303
    await ops.enroll_2fa()
    status, text, _ = await ops.get("/admin")
    assert status == 200 and 'action="/admin/spend-limit"' in text
    for bad in ("-1", "1.234", "lots"):
        status, _, _ = await ops.post("/admin/spend-limit", {"account": account.email,
                                                             "usd": bad})
        assert status == 400, bad
    status, _, _ = await ops.post("/admin/spend-limit", {"account": "nobody@example.com",
                                                         "usd": "2"})
    assert status == 404
    status, _, resp = await ops.post("/admin/spend-limit", {"account": account.email,
                                                            "usd": "2.00"})
    assert status == 303 and resp.headers["Location"] == "/admin?notice=spend-limit-set#spend-limit"
    assert (await server.store.get_account(account.id)).spend_limit_usd == Decimal("2.00")
    status, text, _ = await ops.get("/admin?notice=spend-limit-set")
    assert "Spend limit set." in text
    assert re.search(rf'<tr data-account="{account.id}"><td>spender@example.com</td>'
                     r"<td>tiny</td><td>\$2.00</td></tr>", text)
    [entry] = [e for e in await state.db.audit_entries() if e.action == "account.spend_limit_set"]
    assert entry.actor == "ops@example.com" and entry.account_id == account.id
    assert entry.detail == {"spend_limit_usd": "2.00"}
    # the customer sees the limit and the share used, not the operator's dollars
    status, text, _ = await customer.get("/billing")
    section = re.search(r'<section class="card" id="spend-limit">(.*?)</section>', text, re.S)
    assert section, text
    assert "25.0 % of your $2.00 monthly provider spend limit" in section.group(1)
    assert "$0.50" not in text and 'id="spend-reached"' not in text
    assert "Set for your account by the operator." in section.group(1)
    # at the limit: said so
    status, _, _ = await ops.post("/admin/spend-limit", {"account": account.id, "usd": "0.50"})
    assert status == 303
    status, text, _ = await customer.get("/billing")
    assert "100.0 % of your $0.50" in text and 'id="spend-reached"' in text
    # cleared: back to the plan's (none)
    status, _, _ = await ops.post("/admin/spend-limit", {"account": account.id, "usd": ""})
    assert status == 303 and (await server.store.get_account(account.id)).spend_limit_usd is None
    status, text, _ = await customer.get("/billing")
    assert 'id="spend-limit"' not in text
    # a customer cannot use the operator form
    status, _, _ = await customer.post("/admin/spend-limit", {"account": account.id, "usd": "99"})
    assert status == 403


async def test_spend_limit_dollars_shown_when_the_operator_allows(make_server, clients):
    server = await make_server(pricing={"show_provider_cost": True})
    customer = clients(server)
    await customer.signup("shown@example.com", "shown password 123")
    account = await account_of(server, "shown@example.com")
    project = await server.store.create_project(account.id, "p")
    session_id = await add_session(server.store, account.id, project.id, started_at=time.time() - 30)
    await server.store.db.execute("UPDATE sessions SET provider_cost_micros = ? WHERE id = ?",
                                  (1_234_567, session_id))
    await server.store.update_account(account.id, spend_limit_usd=Decimal("10"))
    status, text, _ = await customer.get("/billing")
    assert status == 200
    assert "12.3 % of your $10 monthly provider spend limit" in text
    assert "($1.23 of provider cost)" in text
