"""Receipts a customer can read, and the small pages around them.

Pure: every verdict reason's sentence carries the measured values and the
policy's thresholds; units are formatted; the cost follows the settlement
and the plan. In headless Chromium, against real sessions (openai SDK →
voxgate → local voice provider, real speech): the receipt shows the
sentence, the timeline and the cost, the raw fields behind a toggle; the
sessions table at 375 px keeps the verdict in view; the favicon is served;
a non-operator's /admin and the /voice page carry the app's navigation;
the pricing cards' buttons line up; the simulator says what it computed.
Screenshots go to ``test-artifacts/web/``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT, SLOW
from tests.test_ws_relay import append_audio, billable_quick_session, recv_until, sdk, session_id_of
from tests.web.conftest import account_of
from voxgate.metering.verdict import VerdictPolicy, decide_verdict
from voxgate.models import Measurements, Plan, Reason, SessionRecord
from voxgate.models.plans import Tier
from voxgate.web import receipts

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "web"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
POLICY = VerdictPolicy(min_audio_ms=4000.0, max_connect_ms=1500.0, min_text_responses=2)


def record_of(m: Measurements, transport: str = "websocket", settlement: str | None = None,
              policy: VerdictPolicy = POLICY) -> SessionRecord:
    verdict = decide_verdict(m, policy)
    return SessionRecord(
        id="sess_test", account_id="acct", project_id="proj", transport=transport,
        started_at=1_700_000_000.0, status="completed", measurements=m,
        billable=verdict.billable, reason=verdict.reason, rule=verdict.rule,
        settlement=settlement or ("included" if verdict.billable else "none"))


# ---------------------------------------------------------------- pure

def test_units():
    assert [receipts.fmt_duration(v) for v in (None, 0, 12.4, 999, 1000, 6000, 59_940, 125_000)] \
        == ["—", "0 ms", "12 ms", "999 ms", "1.0 s", "6.0 s", "59.9 s", "2 min 05 s"]
    assert [receipts.fmt_bytes(v) for v in (None, 0, 512, 4500, 398_123, 1_234_567, 45_000_000)] \
        == ["—", "0 B", "512 B", "4.5 kB", "398 kB", "1.2 MB", "45 MB"]
    assert [receipts.fmt_cents(v) for v in (0, 10, 2900, 123450)] \
        == ["$0", "$0.10", "$29", "$1,234.50"]


CONNECTED = dict(connected=True, connect_ms=120.0, duration_ms=9000.0, closed_by="client",
                 close_code=1000)
CASES = [
    (Measurements(**CONNECTED, audio_in_ms=6000.0, audio_out_ms=3000.0), Reason.BILLABLE,
     ["Billable: 9.0 s of audio exchanged (6.0 s in, 3.0 s out), connected in 120 ms",
      "within 1.5 s", "more than 4.0 s of audio (in + out)"]),
    (Measurements(**CONNECTED, responses=2, responses_completed=2), Reason.BILLABLE,
     ["Billable: a text session with 2 completed responses", "at least 2 completed responses"]),
    (Measurements(**CONNECTED, audio_in_ms=2500.0, audio_out_ms=500.0), Reason.TOO_SHORT,
     ["Not billable: only 3.0 s of audio was exchanged (2.5 s in, 500 ms out)",
      "more than 4.0 s of audio"]),
    (Measurements(**CONNECTED, responses=1, responses_completed=1), Reason.NO_RESPONSE,
     ["Not billable: a text session (no audio) with 1 completed response",
      "at least 2 completed responses"]),
    (Measurements(**{**CONNECTED, "connect_ms": 2345.0}, audio_in_ms=9000.0),
     Reason.CONNECT_TIMEOUT, ["took 2.3 s to connect", "more than 1.5 s to connect"]),
    (Measurements(connected=False, provider_error="upstream_unavailable: refused"),
     Reason.NOT_CONNECTED, ["never started the session (upstream_unavailable: refused)"]),
    (Measurements(**CONNECTED, audio_in_ms=9000.0, provider_errors=1,
                  provider_error="server_error: boom"),
     Reason.PROVIDER_ERROR, ["the voice provider failed (server_error: boom)"]),
    # issue 20: judged by what the provider produced; a blip of audio in keeps a text session
    (Measurements(**CONNECTED, audio_in_ms=20.0, responses=15, responses_completed=15), Reason.BILLABLE,
     ["Billable: a text session with 15 completed responses",
      "judged by what the voice provider's responses produced"]),
    (Measurements(**CONNECTED, audio_in_ms=6000.0, responses=3, responses_failed=3, provider_errors=3,
                  provider_error="response failed: server_error: boom"),
     Reason.PROVIDER_ERROR, ["(response failed: server_error: boom)", "or a failed response"]),
    (Measurements(turn_failure=True, ice_failure_detail="relay allocation refused"),
     Reason.TURN_FAILURE, ["needed the TURN relay", "(relay allocation refused)"]),
    (Measurements(ice_failure=True), Reason.ICE_FAILURE,
     ["found no working network path (no candidate pair connected)"]),
]


@pytest.mark.parametrize("m, reason, parts", CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_every_reason_has_its_sentence_with_values_and_thresholds(m, reason, parts):
    record = record_of(m)
    assert record.reason == reason
    sentence = receipts.verdict_sentence(record, POLICY)
    assert sentence.startswith("Billable: " if record.billable else "Not billable: ")
    assert " — " in sentence  # what happened — the rule
    for part in parts:
        assert part in sentence, (part, sentence)


def test_the_receipt_says_which_provider_error_rule_decided():
    """``[policy] provider_error``: a late error under ``before_threshold``
    leaves the session billable and the receipt says why; an early one
    voids it, in the words of that rule."""
    late = VerdictPolicy(min_audio_ms=4000.0, max_connect_ms=1500.0, provider_error="before_threshold")
    m = Measurements(**CONNECTED, audio_in_ms=9000.0, audio_out_ms=1000.0, responses=2, provider_errors=1,
                     provider_error="server_error: boom", audio_in_ms_at_error=8000.0,
                     audio_out_ms_at_error=1000.0, responses_at_error=2, responses_completed_at_error=2)
    record = record_of(m, policy=late)
    assert (record.reason, record.billable) == (Reason.BILLABLE, True)
    sentence = receipts.verdict_sentence(record, late)
    assert "a late provider error" in sentence
    assert "failed after the threshold was met (server_error: boom)" in sentence
    assert "provider_error = before_threshold" in sentence
    early = Measurements(**{**m.to_dict(), "audio_in_ms_at_error": 1000.0, "audio_out_ms_at_error": 0.0,
                            "responses_at_error": 0, "responses_completed_at_error": 0})
    record = record_of(early, policy=late)
    assert record.reason == Reason.PROVIDER_ERROR
    assert "before the session met its threshold" in receipts.verdict_sentence(record, late)
    assert "before it, audio exchanged 1.0 s ≤ 4.0 s" in (record.rule or "")


def test_every_reason_is_covered_and_unknown_ones_fall_back_to_the_rule():
    assert set(receipts.SENTENCES) == set(Reason.ALL)
    interrupted = SessionRecord(id="s", account_id="a", project_id="p", transport="websocket",
                                started_at=0.0, status="completed", billable=False,
                                reason=Reason.INTERRUPTED, rule="voxgate stopped")
    assert "voxgate stopped while the session was active" in receipts.verdict_sentence(
        interrupted, POLICY)
    odd = SessionRecord(id="s", account_id="a", project_id="p", transport="websocket",
                        started_at=0.0, status="completed", billable=False, reason="tomorrow",
                        rule="a rule of tomorrow")
    assert receipts.verdict_sentence(odd, POLICY) == "Not billable: a rule of tomorrow."
    active = SessionRecord(id="s", account_id="a", project_id="p", transport="websocket",
                           started_at=0.0)
    assert receipts.verdict_sentence(active, POLICY).startswith("In progress")
    assert [s.label for s in receipts.timeline(active)] == ["Accepted", "In progress"]


def test_timeline_of_a_webrtc_call_closed_by_the_provider():
    m = Measurements(**{**CONNECTED, "closed_by": "upstream", "close_code": 1011,
                        "close_reason": "upstream connection lost"},
                     audio_in_ms=7000.0, ice_checking_ms=3.0, ice_connected_ms=40.0,
                     dtls_connected_ms=80.0, ice_pair_type="host",
                     event_counts={"input_audio_buffer.append": 350})
    steps = receipts.timeline(record_of(m, transport="webrtc"))
    assert [(s.at, s.label) for s in steps] == [
        ("+0 ms", "Accepted"), ("+3 ms", "ICE checking"), ("+40 ms", "ICE connected"),
        ("+80 ms", "DTLS connected"), ("+120 ms", "Connected"), ("·", "Audio"),
        ("+9.0 s", "Closed")]
    assert "host candidate pair" in steps[2].detail
    assert "7.0 s in (350 × input_audio_buffer.append)" in steps[5].detail
    assert steps[-1].detail == ("by the voice provider (code 1011, internal error; "
                                "“upstream connection lost”)")


def test_cost_follows_the_settlement_and_the_plan():
    billable = Measurements(**CONNECTED, audio_in_ms=6000.0)
    starter = Plan("starter", "Starter", price_cents=2900, sessions_included=5000)
    pro = Plan("pro", "Pro", price_cents=2900, sessions_included=400, overage_cents=7)
    payg = Plan("payg", "Pay as you go", sessions_included=0, overage_cents=10)
    unlimited = Plan("max", "Max", price_cents=50000)
    cost = receipts.session_cost(record_of(billable), starter)
    assert (cost.amount_cents, cost.summary) == (0, "Included")
    assert "the Starter plan's 5,000 sessions a month" in cost.explanation
    assert "$29 a month" in cost.explanation
    assert "unlimited sessions" in receipts.session_cost(record_of(billable), unlimited).explanation
    cost = receipts.session_cost(record_of(billable, settlement="charged"), pro)
    assert (cost.amount_cents, cost.summary) == (7, "$0.07")
    assert "beyond its 400 included a month (reported to Stripe)" in cost.explanation
    cost = receipts.session_cost(record_of(billable, settlement="pending"), payg)
    assert (cost.amount_cents, cost.summary) == (10, "$0.10")
    assert "price per billable session (queued for Stripe)" in cost.explanation
    free = receipts.session_cost(record_of(Measurements(**CONNECTED)), payg)
    assert (free.amount_cents, free.summary) == (0, "Free")
    pack = receipts.session_cost(record_of(billable, settlement="pack"), starter)
    assert (pack.amount_cents, pack.summary) == (0, "Add-on pack")
    # packs counted into the plan: "included" names the plan's own sessions
    with_packs = Plan("starter", "Starter", price_cents=2900, sessions_included=6000,
                      pack_sessions=1000)
    assert "the Starter plan's 5,000 sessions a month" in receipts.session_cost(
        record_of(billable), with_packs).explanation
    tiered = Plan("enterprise", "Enterprise", price_cents=50000, sessions_included=100_000,
                  overage_cents=5, tiers=(Tier(200_000, 5), Tier(None, 3)))
    cost = receipts.session_cost(record_of(billable, settlement="charged"), tiered)
    assert cost.amount_cents is None and "graduated price per session beyond its 100,000" \
        in cost.explanation


# ---------------------------------------------------------------- in Chromium

async def short_session(server, pcm: bytes, key: str) -> str:
    """A too-short session: 1 s of real speech, then a normal close."""
    async with sdk(server, key).realtime.connect(model="gpt-realtime") as conn:
        sid = session_id_of(conn)
        await recv_until(conn, "session.created")
        await append_audio(conn, pcm[: 24000 * 2], speed=0)
    return sid


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")
async def test_receipts_and_small_pages_in_chromium(make_server, jfk_pcm, tmp_path):
    from playwright.async_api import async_playwright

    server = await make_server(policy={"min_audio_s": 4.0})
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS, headless=True, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(15_000 * SLOW)
        try:
            page = await context.new_page()
            await page.goto(server.url + "/signup")
            await page.fill("input[name=name]", "Grace")
            await page.fill("input[name=email]", "grace@example.com")
            await page.fill("input[name=password]", "compiler of cobol")
            await page.click("button:has-text('Sign up')")
            await page.wait_for_url("**/dashboard?notice=welcome")
            account = await account_of(server, "grace@example.com")
            project = await server.store.create_project(account.id, "Phone line")
            _, key = await server.store.create_api_key(project.id, "k")

            # favicon: linked from every page and served
            icon = await page.get_attribute("link[rel=icon]", "href")
            served = await page.evaluate(
                "async (u) => { const r = await fetch(u);"
                " return [r.status, r.headers.get('content-type'), await r.text()]; }", icon)
            assert served[0] == 200 and served[1].startswith("image/svg+xml")
            assert served[2].lstrip().startswith("<svg")

            # a billable session, included in the plan
            included = await billable_quick_session(server, jfk_pcm, key)
            await server.session(included)
            await page.goto(f"{server.url}/sessions/{included}")
            sentence = await page.inner_text("#verdict-sentence")
            assert sentence.startswith("Billable: 6.0 s of audio exchanged (6.0 s in, "), sentence
            assert "more than 4.0 s of audio (in + out)" in sentence  # [policy] min_audio_s
            labels = await page.locator("#timeline li strong").all_inner_texts()
            assert labels == ["Accepted", "Connected", "Audio", "Closed"]
            timeline = await page.inner_text("#timeline")
            assert "by the client (code 1000, normal closure)" in timeline
            assert "6.0 s in (" in timeline and "× input_audio_buffer.append" in timeline
            cost = await page.inner_text("#cost")
            assert "Included" in cost and "the Tiny plan's 2 sessions a month" in cost
            measured = await page.inner_text("#measurements")
            assert "6.0 s" in measured and " kB" in measured
            # the raw fields are behind a toggle
            assert not await page.is_visible("#raw table")
            await page.click("#raw summary")
            assert await page.is_visible("#raw table")
            assert "audio_in_ms" in await page.inner_text("#raw")
            await page.screenshot(path=str(ARTIFACTS / "receipt-billable.png"), full_page=True)

            # a too-short session: free, and the sentence says why
            short = await short_session(server, jfk_pcm, key)
            await server.session(short)
            await page.goto(f"{server.url}/sessions/{short}")
            sentence = await page.inner_text("#verdict-sentence")
            assert sentence.startswith("Not billable: only 1.0 s of audio was exchanged"), sentence
            assert "Free" in await page.inner_text("#cost")

            # on pay-as-you-go a billable session costs the plan's price
            await server.store.update_account(account.id, plan_id="payg")
            charged = await billable_quick_session(server, jfk_pcm, key)
            record = await server.session(charged)
            assert record.settlement == "pending"
            await page.goto(f"{server.url}/sessions/{charged}")
            cost = await page.inner_text("#cost")
            assert "$0.10" in cost and "Pay as you go plan's price per billable session" in cost
            await page.screenshot(path=str(ARTIFACTS / "receipt-charged.png"), full_page=True)

            # the sessions table on a 375 px phone: every verdict in view
            phone = await context.new_page()
            await phone.set_viewport_size({"width": 375, "height": 812})
            await phone.goto(server.url + "/sessions")
            assert await phone.evaluate("document.documentElement.scrollWidth") <= 375
            for sid, verdict in ((charged, "billable"), (short, "not billable"),
                                 (included, "billable")):
                cell = phone.locator(f"tr[data-session='{sid}'] td.verdict")
                assert (await cell.inner_text()).startswith(verdict)
                box = await cell.bounding_box()
                assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375, box
            await phone.screenshot(path=str(ARTIFACTS / "sessions-375.png"), full_page=True)
            await phone.close()

            # a non-operator's /admin: a page of the app, with its navigation
            response = await page.goto(server.url + "/admin")
            assert response.status == 403
            assert await page.inner_text("h1") == "Operators only"
            nav = await page.locator("header.top nav a").all_inner_texts()
            assert {"Dashboard", "Sessions", "Billing"} <= set(nav) and "Admin" not in nav
            await page.click("#not-operator >> text=Sessions")
            await page.wait_for_url("**/sessions")

            # the voice page: the app's stylesheet and navigation
            await page.goto(server.url + "/voice")
            assert "Sessions" in await page.locator("header.top nav").inner_text()
            brand = await page.eval_on_selector(
                "header.top .brand", "e => getComputedStyle(e).color")
            assert brand == "rgb(91, 60, 196)"  # --brand of voxgate.css
            await page.screenshot(path=str(ARTIFACTS / "voice-page.png"), full_page=True)

            # pricing: every card's button on one line
            await page.goto(server.url + "/pricing")
            rows = await page.eval_on_selector_all(
                ".plan", "els => els.map(e => [Math.round(e.getBoundingClientRect().top),"
                " Math.round(e.querySelector('.plan-action').getBoundingClientRect().bottom)])")
            assert len(rows) == 5
            for card_top in {top for top, _ in rows}:  # cards side by side share a row
                bottoms = {bottom for top, bottom in rows if top == card_top}
                assert len(bottoms) == 1, rows
            await page.screenshot(path=str(ARTIFACTS / "pricing-aligned.png"), full_page=True)

            # the simulator says what it counted and how it priced it
            await page.goto(server.url + "/simulator")
            how = await page.inner_text("#how-computed")
            assert "3, of which 2 billable" in how and "1 not billable" in how
            payg = await page.inner_text(".plan[data-plan=payg]")
            assert "$0.20" in payg and "2 × $0.10" in payg
        finally:
            await context.close()
