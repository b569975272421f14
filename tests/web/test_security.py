"""Regression tests of the dashboard's security findings, one per attack,
against the real app on loopback (real forms, cookies, SQLite, a real
WebSocket session for the CSV export). Each fails without its fix."""

from __future__ import annotations

import asyncio
import csv
import io
import re
import statistics
import time
from urllib.parse import quote

import aiohttp
import pyotp
import pytest

from tests.conftest import SLOW
from tests.web.conftest import RECOVERY_RE, SECRET_RE, account_of, totp_code
from voxgate.config import Settings, load_settings
from voxgate.web.auth import create_operator
from voxgate.web.security import (
    SECURITY_HEADERS,
    DashboardLimits,
    SlidingWindow,
    csv_cell,
    is_loopback,
    safe_next,
)
from voxgate.web.state import WEB
from voxgate.web.views import SIGNUP_REFUSED
from voxgate.web.voice_client import demo_page_enabled

REDIRECT_ATTACKS = [
    "/\t/evil.example/phish",
    "/\n/evil.example/phish",
    "/\r\n/evil.example/phish",
    "//evil.example/phish",
    "/\\evil.example/phish",
    "\\\\evil.example/phish",
    "https://evil.example/phish",
    "javascript:alert(1)",
    " /\t/evil.example",
    "/\x00/evil.example",
    "evil.example/phish",
]


async def signout(c) -> None:
    await c.get("/dashboard")  # the session's CSRF token
    assert (await c.post("/signout"))[0] == 303


# ---------------------------------------------------------------- open redirect

@pytest.mark.parametrize("value", REDIRECT_ATTACKS)
def test_open_redirect_next_is_refused_pure(value):
    assert safe_next(value) == "/dashboard"


def test_same_site_next_is_kept():
    for value in ("/sessions?verdict=billable&from=2026-01-01", "/admin", "/sessions/sess_1#x"):
        assert safe_next(value) == value


async def test_open_redirect_after_sign_in_with_tab_and_newlines(make_server, clients):
    server = await make_server()
    c = clients(server)
    await c.signup("redirect@example.com")
    await c.post("/signout")
    for value in REDIRECT_ATTACKS:
        await c.get("/signin")
        status, _, resp = await c.post("/signin", {"email": "redirect@example.com",
                                                   "password": "correct horse", "next": value})
        assert status == 303, value
        assert resp.headers["Location"] == "/dashboard", (value, resp.headers["Location"])
        # the sign-in page does not carry it either, nor does a signed-in visit
        status, text, resp = await c.get("/signin?next=" + quote(value, safe=""))
        assert status == 303 and resp.headers["Location"] == "/dashboard", value
        await c.get("/dashboard")  # the session's CSRF token
        assert (await c.post("/signout"))[0] == 303
        status, text, _ = await c.get("/signin?next=" + quote(value, safe=""))
        assert 'name="next" value="/dashboard"' in text, value
    await c.get("/signin")
    status, _, resp = await c.post("/signin", {"email": "redirect@example.com",
                                               "password": "correct horse",
                                               "next": "/sessions?verdict=billable"})
    assert resp.headers["Location"] == "/sessions?verdict=billable"


# ---------------------------------------------------------------- password guessing

async def test_password_guessing_is_throttled_per_account(make_server, clients):
    server = await make_server()
    victim = clients(server)
    await victim.signup("victim@example.com")
    attacker = clients(server)
    limit = DashboardLimits.FAILED_PER_ACCOUNT_15_MIN
    for i in range(limit):
        assert await attacker.signin("victim@example.com", f"guess {i}") == 401
    await attacker.get("/signin")
    status, text, resp = await attacker.post("/signin", {"email": "victim@example.com",
                                                         "password": "guess again"})
    assert status == 429 and "Too many attempts" in text
    assert 1 <= int(resp.headers["Retry-After"]) <= 900
    # even the right password waits: the guesser learns nothing more
    assert await attacker.signin("victim@example.com", "correct horse") == 429
    # an unknown email is throttled the same way (no enumeration by the 429)
    for i in range(limit):
        assert await attacker.signin("nobody@example.com", f"guess {i}") == 401
    assert await attacker.signin("nobody@example.com", "guess") == 429
    # another account from the same IP is not locked
    other = clients(server)
    await other.signup("other@example.com")
    await other.post("/signout")
    assert await other.signin("other@example.com", "correct horse") == 303
    audit = [e for e in await server.app[WEB].db.audit_entries() if e.action == "signin.throttled"]
    assert {(e.detail["scope"], e.detail["email"]) for e in audit} == {
        ("account", "victim@example.com"), ("account", "nobody@example.com")}


async def test_password_guessing_across_accounts_is_throttled_per_ip(make_server, clients):
    server = await make_server()
    attacker = clients(server)
    for i in range(DashboardLimits.FAILED_PER_IP_15_MIN):
        assert await attacker.signin(f"user{i}@example.com", "123456") == 401, i
    assert await attacker.signin("fresh@example.com", "123456") == 429
    audit = [e for e in await server.app[WEB].db.audit_entries() if e.action == "signin.throttled"]
    assert [e.detail["scope"] for e in audit] == ["ip"] and audit[0].detail["ip"] == "127.0.0.1"


async def test_signin_request_flood_is_rate_limited_per_ip(make_server, clients):
    server = await make_server()
    c = clients(server)
    await c.signup("flood@example.com")
    await c.get("/signin")
    for _ in range(DashboardLimits.SIGNIN_PER_MIN):
        assert (await c.post("/signin", {"email": "flood@example.com",
                                         "password": "correct horse"}))[0] == 303
        await c.get("/dashboard")  # the new session's CSRF token
    status, _, resp = await c.post("/signin", {"email": "flood@example.com",
                                               "password": "correct horse"})
    assert status == 429 and int(resp.headers["Retry-After"]) >= 1


async def test_signup_flood_is_rate_limited_per_ip(make_server, clients):
    server = await make_server()
    c = clients(server)
    await c.get("/signup")
    for i in range(DashboardLimits.SIGNUP_PER_10_MIN):
        assert (await c.post("/signup", {"email": f"not-an-email-{i}"}))[0] == 400
    status, _, resp = await c.post("/signup", {"email": "new@example.com",
                                               "password": "correct horse"})
    assert status == 429 and int(resp.headers["Retry-After"]) >= 1
    assert await server.store.get_account_by_email("new@example.com") is None


# ---------------------------------------------------------------- enumeration

async def test_user_enumeration_by_signin_timing(make_server, clients):
    """A known email with a wrong password and an unknown email take about
    as long (both verify an argon2 hash)."""
    server = await make_server()
    known = [f"known{i}@example.com" for i in range(4)]
    for email in known:
        c = clients(server)
        await c.signup(email)
    c = clients(server)
    await c.get("/signin")

    async def timed(email: str) -> float:
        start = time.perf_counter()
        status, _, _ = await c.post("/signin", {"email": email, "password": "wrong password"})
        assert status == 401
        return time.perf_counter() - start

    await timed("warmup@example.com")
    known_s = [await timed(e) for e in known]
    unknown_s = [await timed(f"unknown{i}@example.com") for i in range(4)]
    ratio = statistics.median(unknown_s) / statistics.median(known_s)
    assert 0.5 < ratio < 2.0, (known_s, unknown_s)


async def test_user_enumeration_by_signup_message(make_server, clients):
    server = await make_server()
    c = clients(server)
    await c.signup("taken@example.com")
    other = clients(server)
    await other.get("/signup")
    status, text, _ = await other.post("/signup", {"email": "taken@example.com",
                                                    "password": "correct horse"})
    assert status == 400 and SIGNUP_REFUSED in text
    for word in ("exists", "registered", "taken", "in use"):
        assert word not in SIGNUP_REFUSED
    # an account that exists without a dashboard user gets the same words
    await server.store.create_account("apionly@example.com", "tiny")
    status, text, _ = await other.post("/signup", {"email": "apionly@example.com",
                                                    "password": "correct horse"})
    assert status == 400 and SIGNUP_REFUSED in text


# ---------------------------------------------------------------- password policy

async def test_weak_password_12345678_is_refused(make_server, clients):
    server = await make_server()
    c = clients(server)
    await c.get("/signup")
    for weak, why in (("12345678", "at least 12"), ("123456789012", "too easy to guess"),
                      ("password1234", "too easy to guess"),
                      ("weakuser@example.com", "too easy to guess")):
        status, text, _ = await c.post("/signup", {"email": "weakuser@example.com",
                                                    "password": weak})
        assert status == 400 and why in text, weak
    assert await server.store.get_account_by_email("weakuser@example.com") is None
    status, _, _ = await c.post("/signup", {"email": "weakuser@example.com",
                                             "password": "quartz lantern meadow"})
    assert status == 303
    state = server.app[WEB]
    with pytest.raises(ValueError, match="at least 12"):
        await create_operator(server.store, state.db, state.catalog, "op@example.com", "12345678")


# ---------------------------------------------------------------- two-factor sign-in

async def test_operator_without_2fa_cannot_reach_admin(make_server, clients):
    server = await make_server()
    state = server.app[WEB]
    await create_operator(server.store, state.db, state.catalog, "ops@example.com",
                          "operator password")
    ops = clients(server)
    assert await ops.signin("ops@example.com", "operator password") == 303
    status, _, resp = await ops.get("/admin")
    assert status == 303 and resp.headers["Location"] in ("/account/2fa?next=%2Fadmin",
                                                          "/account/2fa?next=/admin")
    status, text, _ = await ops.get("/account/2fa?next=%2Fadmin")
    assert "Operators must turn on two-factor sign-in" in text
    secret = SECRET_RE.search(text).group(1)
    assert f"otpauth://totp/voxgate:ops%40example.com?secret={secret}&amp;issuer=voxgate" in text
    assert '<svg class="qr" role="img"' in text  # the same URI as a QR code
    # a wrong code does not turn it on
    status, _, _ = await ops.post("/account/2fa", {"action": "confirm", "code": "000000"})
    assert status == 400 and (await ops.get("/admin"))[0] == 303
    status, text, _ = await ops.post("/account/2fa", {"action": "confirm", "next": "/admin",
                                                      "code": totp_code(secret)})
    codes = RECOVERY_RE.findall(text)
    assert status == 200 and len(codes) == 10 and 'href="/admin"' in text
    assert (await ops.get("/admin"))[0] == 200
    # operators cannot turn it off
    status, _, _ = await ops.post("/account/2fa", {"action": "disable",
                                                   "code": totp_code(secret)})
    assert status == 403
    # the recovery codes are stored hashed, and shown only once
    rows = await server.store.db.execute_fetchall("SELECT code_hash FROM recovery_codes")
    stored = " ".join(r[0] for r in rows)
    assert len(rows) == 10 and not any(c.replace("-", "") in stored or c in stored for c in codes)
    status, text, _ = await ops.get("/account/2fa")
    assert "10 recovery codes left" in text and not RECOVERY_RE.search(text)
    assert secret not in text
    # new recovery codes (with a code from the app) void the old ones
    status, text, _ = await ops.post("/account/2fa", {"action": "recovery", "code": codes[0]})
    assert status == 400  # a recovery code does not renew recovery codes
    status, text, _ = await ops.post("/account/2fa", {"action": "recovery",
                                                      "code": totp_code(secret)})
    renewed = RECOVERY_RE.findall(text)
    assert status == 200 and len(renewed) == 10 and not set(renewed) & set(codes)
    ops_id = (await state.db.user_by_email("ops@example.com")).id
    assert not await state.db.use_recovery_code(ops_id, codes[1].replace("-", ""))
    assert await state.db.use_recovery_code(ops_id, renewed[1].replace("-", ""))
    # an operator session that skipped the second factor (made before the
    # role was given) does not reach /admin
    user = await state.db.user_by_email("ops@example.com")
    token, _ = await state.db.start_session(user)
    other = clients(server)
    status, _, resp = await other.get("/admin", cookies={"vg_session": token})
    assert status == 303 and resp.headers["Location"].startswith("/signin?next=")
    assert await state.db.session_user(token) is None


async def test_password_alone_does_not_sign_in_a_2fa_user(make_server, clients):
    server = await make_server()
    c = clients(server)
    await c.signup("twofa@example.com")
    secret, codes = await c.enroll_2fa()
    await signout(c)
    # the password alone gives no session
    await c.get("/signin")
    status, _, resp = await c.post("/signin", {"email": "twofa@example.com",
                                               "password": "correct horse",
                                               "next": "/sessions"})
    assert (status, resp.headers["Location"]) == (303, "/signin/2fa")
    assert "vg_session" not in resp.cookies
    assert (await c.get("/dashboard"))[0] == 303
    status, text, _ = await c.get("/signin/2fa")
    assert status == 200 and 'name="code"' in text
    status, _, _ = await c.post("/signin/2fa", {"code": "000000"})
    assert status == 401
    code = totp_code(secret)
    status, _, resp = await c.post("/signin/2fa", {"code": code})
    assert (status, resp.headers["Location"]) == (303, "/sessions")
    assert (await c.get("/dashboard"))[0] == 200
    # the same code is accepted once: refused although it is still the
    # code of the step the server's clock is in
    await signout(c)
    await c.get("/signin")
    await c.post("/signin", {"email": "twofa@example.com", "password": "correct horse"})
    from voxgate.web import twofactor

    assert twofactor.verify_totp(secret, code, server.app[WEB].totp_clock()) is not None
    assert (await c.post("/signin/2fa", {"code": code}))[0] == 401
    # a recovery code works once
    assert (await c.post("/signin/2fa", {"code": codes[0].upper()}))[0] == 303
    await signout(c)
    await c.get("/signin")
    await c.post("/signin", {"email": "twofa@example.com", "password": "correct horse"})
    assert (await c.post("/signin/2fa", {"code": codes[0]}))[0] == 401
    # members may turn it off with a code
    assert (await c.post("/signin/2fa", {"code": codes[1]}))[0] == 303
    await c.get("/account/2fa")
    status, _, resp = await c.post("/account/2fa", {"action": "disable",
                                                    "code": totp_code(secret)})
    assert (status, resp.headers["Location"]) == (303, "/dashboard?notice=2fa-disabled")
    await signout(c)
    assert await c.signin("twofa@example.com", "correct horse") == 303
    actions = [e.action for e in await server.app[WEB].db.audit_entries()]
    assert {"user.2fa_enabled", "user.2fa_disabled", "user.recovery_code_used"} <= set(actions)


async def test_code_guessing_ends_the_pending_sign_in(make_server, clients):
    server = await make_server()
    c = clients(server)
    await c.signup("guesscode@example.com")
    await c.enroll_2fa()
    await c.post("/signout")
    await c.get("/signin")
    await c.post("/signin", {"email": "guesscode@example.com", "password": "correct horse"})
    statuses = [(await c.post("/signin/2fa", {"code": f"{i:06d}"}))[0] for i in range(5)]
    assert statuses == [401, 401, 401, 401, 303]  # the fifth wrong code ends it
    status, _, resp = await c.get("/signin/2fa")
    assert (status, resp.headers["Location"]) == (303, "/signin")
    # and the account is now throttled: a new sign-in waits
    assert await c.signin("guesscode@example.com", "correct horse") == 429


def test_totp_codes_pure():
    from voxgate.web import twofactor

    secret = twofactor.new_secret()
    totp = pyotp.TOTP(secret)
    now = 1_800_000_000.0
    step = int(now) // 30
    assert twofactor.verify_totp(secret, totp.at(now), now) == step
    assert twofactor.verify_totp(secret, totp.at(now - 30), now) == step - 1  # drift
    assert twofactor.verify_totp(secret, totp.at(now - 90), now) is None
    assert twofactor.verify_totp(secret, totp.at(now), now, last_step=step) is None  # replay
    assert twofactor.verify_totp(secret, "12345", now) is None
    codes = twofactor.new_recovery_codes()
    assert len(set(codes)) == 10 and all(RECOVERY_RE.fullmatch(c) for c in codes)


# ---------------------------------------------------------------- cookies and headers

async def test_session_cookie_sent_over_http_when_public_url_is_https(make_server, clients):
    server = await make_server(public_url="https://vox.example")
    c = clients(server)
    _, _, resp = await c.get("/signup")
    assert "Secure" in resp.headers["Set-Cookie"]
    status, _, resp = await c.post("/signup", {"email": "tls@example.com",
                                                "password": "correct horse"},
                                   cookies={"vg_csrf": resp.cookies["vg_csrf"].value})
    assert status == 303
    cookie = resp.headers.getall("Set-Cookie")
    assert any("vg_session=" in h and "Secure" in h for h in cookie)
    assert resp.headers["Strict-Transport-Security"] == "max-age=31536000"
    plain = await make_server()
    c = clients(plain)
    _, _, resp = await c.get("/signup")
    assert "Secure" not in resp.headers["Set-Cookie"]
    assert "Strict-Transport-Security" not in resp.headers


async def test_clickjacking_sniffing_and_inline_script_on_every_dashboard_page(make_server,
                                                                              clients):
    server = await make_server()
    c = clients(server)
    anon = clients(server)
    await c.signup("headers@example.com")
    await c.enroll_2fa()
    account = await account_of(server, "headers@example.com")
    project = await server.store.create_project(account.id, "p")
    pages = ["/dashboard", "/sessions", "/sessions.csv", "/usage.csv", "/projects", "/billing",
             "/simulator", "/pricing", "/account/2fa", "/sessions/sess_missing", "/static/voxgate.css",
             "/static/voxgate.js", "/voice", "/voice/static/voice.js", "/", "/admin"]
    for path in pages:
        status, text, resp = await c.get(path)
        for name, value in SECURITY_HEADERS.items():
            assert resp.headers.get(name) == value, (path, name)
        if resp.content_type == "text/html":
            assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), path
            assert not re.search(r"\son[a-z]+\s*=", text), path
    for path in ("/signin", "/signup", "/signin/2fa", "/dashboard"):
        status, _, resp = await anon.get(path)
        assert resp.headers["Content-Security-Policy"] == SECURITY_HEADERS[
            "Content-Security-Policy"], path
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    status, _, resp = await c.post(f"/projects/{project.id}/keys", {"name": "k"})
    assert status == 200 and resp.headers["X-Frame-Options"] == "DENY"
    # the JSON API is not a dashboard page
    status, _, resp = await c.get("/billing/usage")
    assert "Content-Security-Policy" not in resp.headers


async def test_csv_formula_injection_via_model(make_server, clients):
    """A client opens a real session with ``?model==HYPERLINK(…)``; the
    CSV export does not hand that formula to a spreadsheet."""
    server = await make_server()
    c = clients(server)
    await c.signup("csv@example.com")
    account = await account_of(server, "csv@example.com")
    project = await server.store.create_project(account.id, "@SUM(1+1)")
    _, key = await server.store.create_api_key(project.id, "k")
    model = '=HYPERLINK("http://evil")'
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.ws_url + "?model=" + quote(model, safe=""),
                                   headers={"Authorization": f"Bearer {key}"}) as ws:
            # the local provider refuses an unknown model: the session still
            # counts (not billable) and is listed with the model asked for
            event = await ws.receive_json(timeout=10 * SLOW)
            assert event["type"] in ("session.created", "error"), event
    deadline = time.monotonic() + 5 * SLOW
    while True:
        rows = await server.store.list_sessions(account.id, limit=5)
        if rows and rows[0].status == "completed":
            break
        assert time.monotonic() < deadline, rows
        await asyncio.sleep(0.05)  # the in-process server completes it meanwhile
    assert rows[0].model == model
    status, text, _ = await c.get("/sessions.csv")
    assert status == 200
    row = next(csv.DictReader(io.StringIO(text)))
    assert row["model"] == "'" + model and row["project"] == "'@SUM(1+1)"
    assert row["id"] == rows[0].id  # plain cells are unchanged


def test_csv_cells_pure():
    for bad in ("=1+1", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1"):
        assert csv_cell(bad) == "'" + bad
    for ok in ("gpt-realtime", "", "a=b", 12, -3, None, 1.5):
        assert csv_cell(ok) == ok


# ---------------------------------------------------------------- malformed bodies

@pytest.mark.parametrize("path", ["/signin", "/signup", "/signin/2fa"])
async def test_multipart_without_boundary_and_non_utf8_form_get_400(make_server, clients, path):
    server = await make_server()
    c = clients(server)
    await c.get(path if path != "/signin/2fa" else "/signin")
    for content_type, body in (("multipart/form-data", b"x"),
                               ("multipart/form-data; boundary=abc", b"garbage"),
                               ("application/x-www-form-urlencoded", b"email=\xff\xfe&password=x")):
        async with c.http.post(c.base + path, data=body, allow_redirects=False,
                               headers={"Content-Type": content_type}) as resp:
            text = await resp.text()
        assert resp.status == 400, (content_type, resp.status, text)
        assert "could not read the form" in text and "Traceback" not in text


# ---------------------------------------------------------------- demo keys

async def test_demo_key_minted_without_credentials_off_loopback(make_server, http):
    from voxgate.proxy.keys import DEMO_KEY_FILE

    wide = await make_server(host="0.0.0.0")
    # a demo project left from an earlier run on loopback
    data_dir = wide.gateway.settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / DEMO_KEY_FILE).write_text(wide.key + "\n")
    r = await http.post(wide.url + "/voice/demo-key")
    assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
    assert "loopback" in (await r.json())["error"]["message"]
    if "demo" in Settings.model_fields:  # the operator's explicit opt-in
        opted = await make_server(host="0.0.0.0", demo=True)
        r = await http.post(opted.url + "/voice/demo-key")
        assert r.status == 200 and (await r.json())["value"].startswith("ek_")
    local = await make_server()  # host 127.0.0.1: the local demo works
    r = await http.post(local.url + "/voice/demo-key")
    assert r.status == 200 and (await r.json())["value"].startswith("ek_")


def test_demo_page_follows_the_listen_address():
    assert demo_page_enabled(load_settings(None, host="127.0.0.1"))
    assert demo_page_enabled(load_settings(None, host="localhost"))
    assert demo_page_enabled(load_settings(None, host="::1"))
    assert not demo_page_enabled(load_settings(None, host="0.0.0.0"))
    assert not demo_page_enabled(load_settings(None, host="::"))
    assert not demo_page_enabled(load_settings(None, host="10.0.0.5"))
    assert not demo_page_enabled(load_settings(None, host="127.0.0.1", web={"demo_page": False}))
    if "demo" in Settings.model_fields:  # the operator's explicit opt-in
        assert demo_page_enabled(load_settings(None, host="0.0.0.0", demo=True))
    assert is_loopback("127.0.0.2") and is_loopback("[::1]") and not is_loopback("")


async def test_demo_key_flood_is_rate_limited_per_ip(make_server, http):
    server = await make_server()
    for _ in range(DashboardLimits.DEMO_KEYS_PER_MIN):
        r = await http.post(server.url + "/voice/demo-key")
        assert r.status == 200, await r.text()
    r = await http.post(server.url + "/voice/demo-key")
    assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
    assert (await r.json())["error"]["code"] == "rate_limit_exceeded"


# ---------------------------------------------------------------- limiter memory

def test_sliding_window_memory_is_bounded():
    window = SlidingWindow(3, 60.0, max_keys=100)
    for i in range(10_000):
        window.record(f"ip{i}", float(i) / 1000)
    assert len(window) == 100
    assert [window.hit("a", 0.0), window.hit("a", 1.0), window.hit("a", 2.0)] == [0.0] * 3
    assert window.hit("a", 3.0) == pytest.approx(57.0)
    assert window.hit("a", 60.5) == 0.0  # the first event left the window


def test_processes_starting_at_once_agree_on_one_session_secret(tmp_path):
    """Several voxgate processes starting together on one data directory
    (two hosts' worth of `voxgate serve` in the cluster tests) each get the
    same cookie secret, none fails on the file another is creating, and no
    candidate file is left behind."""
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from voxgate.web.auth import load_secret; "
            "print(load_secret(None, Path(sys.argv[1])).decode())")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(12)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 12, [err for _, err in outs]
    secrets_seen = {out.strip() for out, _ in outs}
    assert len(secrets_seen) == 1 and len(secrets_seen.pop()) >= 48
    assert [p.name for p in tmp_path.iterdir()] == ["session_secret"]
    assert (tmp_path / "session_secret").stat().st_mode & 0o777 == 0o600
