"""Who may see and change what: sign-in required, operators only, CSRF on
every form, and account A never reaching account B's data through any page
or API route."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.web.conftest import WebClient, account_of, add_session
from voxgate.web.auth import create_operator
from voxgate.web.state import WEB

MEMBER_PAGES = ["/dashboard", "/sessions", "/sessions/sess_x", "/sessions.csv", "/usage.csv",
                "/projects", "/billing", "/simulator"]
OPERATOR_PAGES = ["/admin", "/admin/analytics", "/admin/audit"]


async def test_pages_need_sign_in(make_server, clients):
    server = await make_server()
    anon = clients(server)
    for path in MEMBER_PAGES + OPERATOR_PAGES:
        status, _, resp = await anon.get(path)
        assert status == 303, path
        assert resp.headers["Location"].startswith("/signin?next="), path
    status, _, resp = await anon.get("/")
    assert (status, resp.headers["Location"]) == (303, "/signin")
    for path in ("/pricing", "/signin", "/signup"):
        assert (await anon.get(path))[0] == 200, path
    # signed-out POSTs to member forms go to sign-in as well
    assert (await anon.post("/projects", {"name": "x"}))[0] == 303


async def test_operator_pages_refuse_members(make_server, clients):
    server = await make_server()
    member = clients(server)
    await member.signup("member@example.com")
    for path in OPERATOR_PAGES:
        assert (await member.get(path))[0] == 403, path
    state = server.app[WEB]
    await create_operator(server.store, state.db, state.catalog, "ops@example.com",
                          "operator password")
    ops = clients(server)
    assert await ops.signin("ops@example.com", "operator password") == 303
    # an operator without two-factor sign-in enrolls first
    for path in OPERATOR_PAGES:
        status, _, resp = await ops.get(path)
        assert status == 303 and resp.headers["Location"].startswith("/account/2fa?next="), path
    await ops.enroll_2fa()
    for path in OPERATOR_PAGES:
        assert (await ops.get(path))[0] == 200, path
    # promoting an existing member keeps their password
    await create_operator(server.store, state.db, state.catalog, "member@example.com", None)
    again = clients(server)
    assert await again.signin("member@example.com", "correct horse") == 303
    assert (await again.get("/admin/analytics"))[0] == 303
    await again.enroll_2fa()
    assert (await again.get("/admin/analytics"))[0] == 200


async def test_sign_in_out_and_cookie_flags(make_server, clients):
    server = await make_server(web={"secure_cookies": True})
    c = clients(server)
    _, _, resp = await c.get("/signup")
    csrf_cookie = resp.headers["Set-Cookie"]
    assert "vg_csrf=" in csrf_cookie and "Secure" in csrf_cookie and "HttpOnly" in csrf_cookie
    # Secure cookies are not sent back over http: send it by hand
    status, _, resp = await c.post("/signup", {"email": "Flags@Example.com",
                                                "password": "long enough, and odd"},
                                   cookies={"vg_csrf": resp.cookies["vg_csrf"].value})
    assert status == 303
    cookie = resp.headers["Set-Cookie"]
    assert "vg_session=" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" in cookie and "Path=/" in cookie
    token = resp.cookies["vg_session"].value
    plain = clients(server)
    status, text, _ = await plain.get("/dashboard", cookies={"vg_session": token})
    assert status == 200 and "flags@example.com" in text

    server2 = await make_server()
    c = clients(server2)
    await c.signup("who@example.com")
    assert (await c.get("/dashboard"))[0] == 200
    status, _, _ = await c.post("/signout")
    assert status == 303
    assert (await c.get("/dashboard"))[0] == 303
    # the old token is dead server-side, not just forgotten by the client
    assert (await plain.get("/dashboard", cookies={"vg_session": token}))[0] == 200
    bad = clients(server2)
    assert await bad.signin("who@example.com", "wrong password") == 401
    assert await bad.signin("nobody@example.com", "correct horse") == 401
    assert await bad.signin("WHO@example.com", "correct horse") == 303
    # duplicate sign-up (in words that do not say so) and short passwords are refused
    dup = clients(server2)
    await dup.get("/signup")
    status, text, _ = await dup.post("/signup", {"email": "who@example.com",
                                                  "password": "correct horse"})
    assert status == 400 and "could not create an account" in text
    status, text, _ = await dup.post("/signup", {"email": "new@example.com", "password": "short"})
    assert status == 400 and "at least 12" in text


async def test_signed_out_session_token_is_revoked(make_server, clients):
    server = await make_server()
    c = clients(server)
    await c.signup("revoke@example.com")
    token = next(m.value for m in c.http.cookie_jar if m.key == "vg_session")
    await c.post("/signout")
    other = clients(server)
    assert (await other.get("/dashboard", cookies={"vg_session": token}))[0] == 303


async def test_every_form_needs_the_csrf_token(make_server, clients):
    server = await make_server()
    c = clients(server)
    await c.signup("csrf@example.com")
    account = await account_of(server, "csrf@example.com")
    project = await server.store.create_project(account.id, "p")
    key, _ = await server.store.create_api_key(project.id, "k")
    forms = {
        "/projects": {"name": "x"},
        f"/projects/{project.id}/keys": {"name": "x"},
        f"/projects/{project.id}/keys/{key.id}/revoke": {},
        f"/projects/{project.id}/delete": {},
        "/billing": {"action": "manage"},
        "/signout": {},
        "/signin": {"email": "csrf@example.com", "password": "correct horse"},
        "/signup": {"email": "csrf2@example.com", "password": "correct horse"},
    }
    for path, data in forms.items():
        assert (await c.post(path, data, csrf=False))[0] == 403, path
        assert (await c.post(path, {**data, "csrf_token": "forged"}, csrf=False))[0] == 403, path
    # nothing happened
    assert len(await server.store.list_projects(account.id)) == 1
    assert (await server.store.list_api_keys(project.id))[0].active
    assert (await c.get("/dashboard"))[0] == 200
    # signed out: sign-in and sign-up forms need the token of the vg_csrf cookie
    anon = clients(server)
    assert (await anon.post("/signin", {"email": "csrf@example.com",
                                        "password": "correct horse"}, csrf=False))[0] == 403
    fresh = WebClient(server.url)
    try:
        status, _, _ = await fresh.post("/signup", {"email": "x@example.com",
                                                    "password": "correct horse",
                                                    "csrf_token": c.csrf}, csrf=False)
        assert status == 403  # a token without its cookie
    finally:
        await fresh.close()
    # the cookie-authenticated JSON APIs ignore the cookie on unsafe methods
    # unless the X-CSRF-Token header matches
    status, _, _ = await c.post("/v1/realtime/client_secrets", csrf=False)
    assert status == 401


async def test_account_a_cannot_reach_account_b(make_server, clients):
    server = await make_server()
    a, b = clients(server), clients(server)
    await a.signup("a@example.com")
    await b.signup("b@example.com")
    acct_a = await account_of(server, "a@example.com")
    acct_b = await account_of(server, "b@example.com")
    proj_a = await server.store.create_project(acct_a.id, "A project")
    proj_b = await server.store.create_project(acct_b.id, "B secret project")
    key_b, _ = await server.store.create_api_key(proj_b.id, "b key")
    sid_a = await add_session(server.store, acct_a.id, proj_a.id)
    sid_b = await add_session(server.store, acct_b.id, proj_b.id)
    sid_b2 = await add_session(server.store, acct_b.id, proj_b.id, billable=False)

    # B sees its own
    status, text, _ = await b.get(f"/sessions/{sid_b}")
    assert status == 200 and "rule for billable" in text

    # pages and exports
    for path in (f"/sessions/{sid_b}", f"/sessions/{sid_b2}", f"/sessions?project={proj_b.id}",
                 f"/sessions.csv?project={proj_b.id}"):
        assert (await a.get(path))[0] == 404, path
    for path in ("/sessions", "/sessions.csv", "/usage.csv", "/dashboard", "/projects",
                 "/billing", "/simulator"):
        status, text, _ = await a.get(path)
        assert status == 200, path
        for secret in (sid_b, sid_b2, proj_b.id, "B secret project", key_b.prefix):
            assert secret not in text, (path, secret)
    status, text, _ = await a.get("/sessions")
    assert sid_a in text
    # JSON APIs with A's cookie
    status, text, _ = await a.get(f"/v1/sessions/{sid_b}")
    assert status == 404
    status, text, _ = await a.get(f"/v1/sessions?project_id={proj_b.id}")
    assert status == 200 and sid_b not in text
    status, text, _ = await a.get(f"/v1/sessions?after={sid_b}")
    assert status == 404
    async with a.http.get(server.url + "/billing/usage") as resp:
        usage = await resp.json()
    assert usage["sessionsUsed"] == 1  # A's one billable session, not B's
    # changes
    for path in (f"/projects/{proj_b.id}/delete", f"/projects/{proj_b.id}/keys",
                 f"/projects/{proj_b.id}/keys/{key_b.id}/revoke",
                 f"/projects/{proj_a.id}/keys/{key_b.id}/revoke"):
        assert (await a.post(path, {"name": "pwn"}))[0] == 404, path
    assert await server.store.get_project(proj_b.id) is not None
    keys_b = await server.store.list_api_keys(proj_b.id)
    assert [k.id for k in keys_b] == [key_b.id] and keys_b[0].active


async def test_projects_and_keys(make_server, clients):
    server = await make_server()
    c = clients(server)
    await c.signup("keys@example.com")  # tiny plan: 2 projects
    account = await account_of(server, "keys@example.com")
    for name in ("one", "two"):
        assert (await c.post("/projects", {"name": name}))[0] == 303
    status, text, _ = await c.post("/projects", {"name": "three"})
    assert status == 403 and "allows 2 projects" in text
    projects = await server.store.list_projects(account.id)
    assert [p.name for p in projects] == ["one", "two"]
    status, text, _ = await c.post(f"/projects/{projects[0].id}/keys", {"name": "mobile"})
    assert status == 200 and "shown only once" in text
    plaintext = text.split('id="new-key" class="mono" readonly value="')[1].split('"')[0]
    found = await server.store.find_api_key(plaintext)
    assert found is not None and found[1].id == projects[0].id
    status, text, _ = await c.get("/projects")
    assert plaintext not in text and found[0].prefix in text
    key_id = found[0].id
    assert (await c.post(f"/projects/{projects[0].id}/keys/{key_id}/revoke"))[0] == 303
    assert not (await server.store.list_api_keys(projects[0].id))[0].active
    # allowed web origins of the project's ephemeral keys
    status, _, _ = await c.post(f"/projects/{projects[0].id}/origins",
                                {"origins": "https://App.example.com\nhttp://127.0.0.1:3000"})
    assert status == 303
    project = await server.store.get_project(projects[0].id)
    assert project.allowed_origins == ("https://app.example.com", "http://127.0.0.1:3000")
    status, text, _ = await c.get("/projects")
    assert "https://app.example.com\nhttp://127.0.0.1:3000</textarea>" in text
    status, text, _ = await c.post(f"/projects/{projects[0].id}/origins",
                                   {"origins": "app.example.com"})
    assert status == 400 and "is not an origin" in text
    # admin keys: created by the owner, shown once, hashed, revocable
    status, text, _ = await c.post("/admin-keys", {"name": "billing bot"})
    assert status == 200 and "shown only once" in text
    admin_plain = text.split('id="new-admin-key" class="mono" readonly value="')[1].split('"')[0]
    assert admin_plain.startswith("vg_admin_")
    found_admin = await server.store.find_admin_key(admin_plain)
    assert found_admin is not None and found_admin[1].id == account.id
    assert admin_plain not in (await c.get("/projects"))[1]
    assert (await c.post(f"/admin-keys/{found_admin[0].id}/revoke"))[0] == 303
    assert not (await server.store.list_admin_keys(account.id))[0].active
    assert (await c.post("/admin-keys/adminkey_nope/revoke"))[0] == 404
    assert (await c.post(f"/projects/{projects[1].id}/delete"))[0] == 303
    assert [p.name for p in await server.store.list_projects(account.id)] == ["one"]
    # audit log records the actions
    state = server.app[WEB]
    actions = [e.action for e in await state.db.audit_entries()]
    assert {"user.signup", "project.created", "key.created", "key.revoked",
            "project.origins_set", "admin_key.created", "admin_key.revoked",
            "project.deleted"} <= set(actions)


async def test_demo_account_gets_a_dashboard_user(make_server, clients, tmp_path):
    server = await make_server()
    settings_dir = Path(server.app[WEB].store.dialect.path).parent
    password = (settings_dir / "demo_password").read_text().strip()
    assert oct((settings_dir / "demo_password").stat().st_mode & 0o777) == "0o600"
    c = clients(server)
    assert await c.signin("demo@voxgate.local", password) == 303
    status, text, _ = await c.get("/projects")
    assert "Demo project" in text


@pytest.mark.parametrize("billable,alert,banner", [(1, False, False), (82, True, False),
                                                   (86, True, True)])
async def test_quota_card_alert_and_banner(make_server, clients, billable, alert, banner):
    server = await make_server()
    c = clients(server)
    await c.signup("quota@example.com")
    account = await account_of(server, "quota@example.com")
    await server.store.update_account(account.id, plan_id="free")  # 100 included
    project = await server.store.create_project(account.id, "p")
    for _ in range(billable):
        await add_session(server.store, account.id, project.id)
    await add_session(server.store, account.id, project.id, billable=False)
    status, text, _ = await c.get("/dashboard")
    assert status == 200
    assert f"<strong>{billable} / 100</strong> sessions" in text
    assert "≈ 200 minutes estimated" in text
    assert ('class="bar alert"' in text) is alert
    assert ('class="banner"' in text) is banner
    assert "Powered by voxgate" in text  # free plan: the badge
    if banner:
        assert "Upgrade to Starter" in text



async def test_sign_up_from_a_paid_plan_card_lands_on_billing(make_server, clients):
    server = await make_server()
    c = clients(server)
    status, text, _ = await c.get("/signup?plan=starter")
    assert 'name="plan" value="starter"' in text
    status, _, resp = await c.post("/signup", {"email": "paid@example.com",
                                                "password": "correct horse", "plan": "starter"})
    assert (status, resp.headers["Location"]) == (303, "/billing")
    account = await server.store.get_account_by_email("paid@example.com")
    assert account.plan_id == "tiny"  # the plan changes through Stripe Checkout only
