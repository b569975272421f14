"""The dashboard in headless Chromium: sign up, create a project and a
key, run a real session with that key (openai SDK → voxgate → local voice
provider, real speech), find it in the sessions table with its verdict,
open its receipt, export CSV, look at the pricing page. Screenshots of
each page go to ``test-artifacts/web/``."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT, SLOW
from tests.test_ws_relay import billable_quick_session
from tests.web.conftest import totp_code
from voxgate.web.auth import create_operator
from voxgate.web.state import WEB

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "web"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")


async def test_sign_up_to_session_receipt_in_a_browser(make_server, jfk_pcm, tmp_path):
    from playwright.async_api import async_playwright

    server = await make_server()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    timeout_ms = 15_000 * SLOW
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS, headless=True, accept_downloads=True,
            viewport={"width": 1280, "height": 900})
        context.set_default_timeout(timeout_ms)
        try:
            page = await context.new_page()
            csp_violations: list[str] = []
            page.on("console", lambda m: csp_violations.append(m.text)
                    if "Content Security Policy" in m.text else None)

            async def shot(name: str) -> None:
                await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

            # sign up
            await page.goto(server.url + "/")
            assert page.url.endswith("/signin")
            await page.click("text=Sign up free")
            await page.fill("input[name=name]", "Ada")
            await page.fill("input[name=email]", "ada@example.com")
            await page.fill("input[name=password]", "analytical engine")
            await shot("signup")
            await page.click("button:has-text('Sign up')")
            await page.wait_for_url("**/dashboard?notice=welcome")
            quota = await page.inner_text("#quota")
            assert "0 / 2 sessions" in quota and "≈ 4 minutes estimated" in quota
            await shot("dashboard-empty")

            # project and key
            await page.click("nav >> text=Projects")
            await page.fill("input[name=name][placeholder='Project name']", "Voice app")
            await page.click("button:has-text('Create project')")
            await page.wait_for_url("**/projects?notice=project-created")
            assert "Project created." in await page.inner_text("main")
            await page.fill(".project input[name=name]", "laptop")
            await page.click(".project button:has-text('Create key')")
            key = await page.input_value("#new-key")
            assert key.startswith("vg_live_")
            assert "shown only once" in await page.inner_text(".newkey")
            # the page's script (a static file: the CSP allows no inline script) runs
            await page.click(".newkey button:has-text('Copy')")
            await page.wait_for_selector(".newkey button:has-text('Copied')")
            await shot("projects-new-key")

            # a real session with that key
            sid = await billable_quick_session(server, jfk_pcm, key)
            record = await server.session(sid)
            assert record.billable and record.reason == "billable"

            # in the sessions table with its verdict
            await page.click("nav >> text=Sessions")
            row = page.locator(f"tr[data-session='{sid}']")
            text = await row.inner_text()
            assert "Voice app" in text and "websocket" in text and "billable" in text
            assert "not billable" not in text
            await shot("sessions")

            # its receipt: every measurement and the deciding rule
            await row.locator("a").click()
            await page.wait_for_url(f"**/sessions/{sid}")
            await page.click("#raw summary")  # the raw fields are behind a toggle
            receipt = await page.inner_text("main")
            assert record.rule and record.rule in receipt
            for name in ("audio_in_ms", "connect_ms", "duration_ms", "closed_by",
                         "input_audio_buffer.append"):
                assert name in receipt, name
            await shot("receipt")

            # CSV export
            await page.click("nav >> text=Sessions")
            async with page.expect_download() as info:
                await page.click("#export-csv")
            download = await info.value
            rows = list(csv.DictReader(io.StringIO(Path(await download.path()).read_text())))
            assert [r["id"] for r in rows] == [sid]
            assert rows[0]["billable"] == "true" and rows[0]["project"] == "Voice app"

            # the dashboard counts it
            await page.click("nav >> text=Dashboard")
            assert "1 / 2 sessions" in await page.inner_text("#quota")
            assert await page.locator("svg.chart").count() == 3
            assert "Powered by voxgate" in await page.inner_text("#badge")
            await shot("dashboard")

            for name in ("billing", "simulator"):
                await page.click(f"nav >> text={name.title()}")
                await shot(name)
            assert "cheapest" in await page.inner_text("main")

            # phone width
            phone = await context.new_page()
            await phone.set_viewport_size({"width": 390, "height": 844})
            await phone.goto(server.url + "/dashboard")
            width = await phone.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"dashboard overflows a phone screen: {width}px"
            await phone.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
            await phone.goto(server.url + "/sessions")
            await phone.screenshot(path=str(ARTIFACTS / "sessions-phone.png"), full_page=True)
            await phone.close()

            # pricing, signed out
            await page.click("button:has-text('Sign out')")
            await page.wait_for_url("**/signin")
            await page.goto(server.url + "/pricing")
            cards = page.locator(".plan")
            assert await cards.count() == 5
            starter = await page.inner_text(".plan[data-plan=starter]")
            assert "$29" in starter and "5,000 sessions per month" in starter
            assert "≈ 10,000 minutes" in starter and "3 projects" in starter
            assert "Email support" in starter and "10 concurrent sessions" in starter
            await shot("pricing")

            # the operator's pages
            state = server.app[WEB]
            await create_operator(server.store, state.db, state.catalog, "ops@example.com",
                                  "operator password")
            await page.goto(server.url + "/signin")
            await page.fill("input[name=email]", "ops@example.com")
            await page.fill("input[name=password]", "operator password")
            await page.click("button:has-text('Sign in')")
            await page.wait_for_url("**/dashboard")
            # an operator enrolls two-factor sign-in before reaching /admin
            await page.click("nav >> text=Admin")
            await page.wait_for_url(re.compile(r"/account/2fa\?next=(%2F|/)admin$"))
            assert "Operators must turn on two-factor sign-in" in await page.inner_text("main")
            secret = await page.input_value("#totp-secret")
            uri = await page.get_attribute("#otpauth-uri", "href")
            assert uri.startswith("otpauth://totp/voxgate:ops%40example.com?secret=" + secret)
            await shot("enroll-2fa")
            await page.fill("input[name=code]", totp_code(secret))
            await page.click("button:has-text('Turn on')")
            codes = (await page.input_value("#recovery-codes")).split()
            assert len(codes) == 10 and "shown only once" in await page.inner_text("main")
            await shot("recovery-codes")
            await page.click("#continue")
            await page.wait_for_url("**/admin")
            assert await page.locator("svg.chart").count() == 4
            # signing in again asks for the code after the password
            await page.click("button:has-text('Sign out')")
            await page.wait_for_url("**/signin")
            await page.fill("input[name=email]", "ops@example.com")
            await page.fill("input[name=password]", "operator password")
            await page.click("button:has-text('Sign in')")
            await page.wait_for_url("**/signin/2fa")
            await shot("signin-2fa")
            await page.fill("input[name=code]", totp_code(secret))
            await page.click("button:has-text('Verify')")
            await page.wait_for_url("**/dashboard")
            await page.click("nav >> text=Admin")
            assert await page.locator("svg.chart").count() == 4
            assert "Operator analytics" in await page.inner_text("h1")
            await shot("admin")
            await page.click("text=Audit log")
            assert "key.created" in await page.inner_text("table")
            await shot("audit")
            assert csp_violations == []
        finally:
            await context.close()
