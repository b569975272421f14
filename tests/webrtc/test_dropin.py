"""Browser apps that nobody on this project wrote, in real Chromium with
real speech as the microphone, served from the app's own origin (another
loopback port than voxgate): OpenAI's WebRTC guide code with only the base
URL changed, a push-to-talk app, a closed tab, a project's origin
allowlist, and a server attached to the browser's call by ``call_id``."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import pytest
from openai import AsyncOpenAI

from tests.conftest import SLOW
from tests.webrtc.app_origin import AppOrigin
from tests.webrtc.conftest import require
from tests.webrtc.test_browser import CHROMIUM, chromium_args, speech_wav
from tests.webrtc.test_calls import assert_nothing_left

pytestmark = pytest.mark.usefixtures("chromium_installed")


@pytest.fixture(scope="module")
def chromium_installed() -> None:
    require(CHROMIUM, "chromium")


@pytest.fixture
def speech_file(tmp_path, speech_dir):
    wav = tmp_path / "speech.wav"
    speech_wav(wav, speech_dir)
    return wav


@contextlib.asynccontextmanager
async def browser(tmp_path, wav):
    """A fresh headless Chromium whose microphone plays ``wav`` once."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / f"profile-{time.monotonic_ns()}"), executable_path=CHROMIUM,
            headless=True, args=chromium_args(wav))
        context.set_default_timeout(20_000 * SLOW)
        try:
            yield context
        finally:
            await context.close()


@contextlib.asynccontextmanager
async def app_origin(server, key: str | None = None, **kw):
    origin = await AppOrigin(server.url, key or server.key, **kw).start()
    try:
        yield origin
    finally:
        await origin.close()


async def open_call(context, url: str):
    """Open the page and wait until its call's data channel is open."""
    page = await context.new_page()
    logs: list[str] = []
    page.on("console", lambda m: logs.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: logs.append(f"pageerror: {e}"))
    await page.goto(url)
    await page.wait_for_function(
        "window.error !== null || (window.call && window.call.dc.readyState === 'open')",
        timeout=15_000 * SLOW)
    error = await page.evaluate("window.error")
    assert error is None, (error, await page.evaluate("window.call && window.call.body"), logs)
    return page


async def wait_types(page, *types: str, timeout_s: float = 60.0) -> None:
    await page.wait_for_function(
        f"{list(types)!r}.every(t => window.types().includes(t))", timeout=timeout_s * 1000 * SLOW)


async def all_calls_ended(server, within_s: float = 6.0) -> None:
    """Pages closed with the browser end their calls on their own (within
    ``consent_grace_s`` + 2 s); then nothing is left."""
    deadline = time.monotonic() + within_s * SLOW
    while server.gateway.active and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await assert_nothing_left(server)


# The app's server mints keys whose sessions transcribe what the user says,
# as an app showing it would (OpenAI's default is no input transcription).
TRANSCRIBED = {"type": "realtime", "model": "gpt-realtime",
               "audio": {"input": {"transcription": {"model": "whisper-1"}}}}


HEARD_JS = ("window.events.some(e => e.type ==="
            " 'conversation.item.input_audio_transcription.completed'"
            " && /country|americans|fellow|ask/i.test(e.transcript))")


def call_id_of(location: str) -> str:
    return location.rsplit("/", 1)[1]


async def test_openai_guide_code_from_another_origin(make_server, http, tmp_path, speech_file):
    """The guide posts ``offer.sdp`` straight after ``setLocalDescription``
    (no candidates in it): the call still connects, speech is heard and
    answered, reply audio plays, and the session is billable."""
    server = await make_server(plan="free", webrtc={"host_addresses": ["127.0.0.1"]})
    async with app_origin(server, session=TRANSCRIBED) as app, \
            browser(tmp_path, speech_file) as context:
        assert app.url != server.url
        page = await open_call(context, app.url + "/guide.html")
        call = await page.evaluate("({status: window.call.status,"
                                   " location: window.call.location})")
        assert call["status"] == 201
        assert call["location"].startswith("/v1/realtime/calls/rtc_")  # exposed to fetch
        await wait_types(page, "session.created",
                         "conversation.item.input_audio_transcription.completed",
                         "response.done")
        await page.wait_for_function("window.packetsReceived().then(n => n > 50)",
                                     timeout=20_000 * SLOW)
        packets = await page.evaluate("window.packetsReceived()")
        # Server VAD cuts the speech into turns, each transcribed on its own;
        # the words may come in a later turn than the first transcript, so
        # wait for them over all the turns.
        with contextlib.suppress(Exception):
            await page.wait_for_function(HEARD_JS, timeout=15_000 * SLOW)
        heard = await page.evaluate(
            "window.events.filter(e => e.type ==="
            " 'conversation.item.input_audio_transcription.completed')"
            ".map(e => e.transcript).join(' ')")
        r = await http.post(server.url + call["location"] + "/hangup",
                            headers={"Authorization": f"Bearer {server.key}"})
        assert r.status == 200
    record = await server.session("sess_" + call_id_of(call["location"])[4:])
    m = record.measurements
    assert any(w in heard.lower() for w in ("country", "americans", "fellow", "ask")), heard
    assert packets > 50
    assert record.transport == "webrtc"
    assert record.billable is True and record.reason == "billable", record.rule
    assert m.ice_pair_type in ("host", "prflx")
    assert m.connect_ms is not None and m.connect_ms < 2000
    await assert_nothing_left(server)
    print(f"guide page: connect_ms={m.connect_ms:.0f} packets={packets} heard={heard[:60]!r}")


async def test_preflight_and_cors_headers(make_server, http):
    """What the browser checks, spelled out: the preflight of the guide's
    POST, and the headers on the answer and on an error."""
    server = await make_server()
    origin = "http://127.0.0.1:1"
    r = await http.options(server.url + "/v1/realtime/calls", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-openai-agents-sdk"})
    assert r.status == 204
    assert r.headers["Access-Control-Allow-Origin"] == origin
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert r.headers["Access-Control-Allow-Headers"] == \
        "authorization,content-type,x-openai-agents-sdk"
    r = await http.post(server.url + "/v1/realtime/calls", data="v=0\r\n",
                        headers={"Origin": origin, "Content-Type": "application/sdp",
                                 "Authorization": "Bearer ek_nope"})
    assert r.status == 401
    assert r.headers["Access-Control-Allow-Origin"] == origin
    assert "Location" in r.headers["Access-Control-Expose-Headers"]
    assert (await r.json())["error"]["code"] == "invalid_api_key"
    # server-side routes take project keys only: no CORS for them
    r = await http.options(server.url + "/v1/realtime/client_secrets", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in r.headers


async def test_push_to_talk_client_is_not_made_free(make_server, tmp_path, speech_file, http):
    """No audio leaves the browser until 5 s after the call is up (more than
    the 3 s the issue names, and more than ``consent_grace_s``: a client that
    only sends RTCP and STUN is silent, not gone): the connect latency is the
    call's, not the microphone's."""
    server = await make_server(webrtc={"host_addresses": ["127.0.0.1"]})
    async with app_origin(server, session=TRANSCRIBED, PTT_DELAY_MS="5000") as app, \
            browser(tmp_path, speech_file) as context:
        page = await open_call(context, app.url + "/push-to-talk.html")
        await page.wait_for_function("window.talkingAt !== undefined", timeout=10_000 * SLOW)
        await wait_types(page, "conversation.item.input_audio_transcription.completed",
                         "response.done")
        location = await page.evaluate("window.call.location")
        talk_delay_ms = await page.evaluate("window.talkingAt - window.openedAt")
        await page.wait_for_function("window.types().includes('output_audio_buffer.stopped')",
                                     timeout=60_000 * SLOW)
        r = await http.post(server.url + location + "/hangup",
                            headers={"Authorization": f"Bearer {server.key}"})
        assert r.status == 200
    record = await server.session("sess_" + call_id_of(location)[4:])
    m = record.measurements
    assert talk_delay_ms >= 5000  # longer than consent_grace_s: silent is not gone
    assert m.connect_ms is not None and m.connect_ms < 500, m.connect_ms
    assert m.audio_exchanged_ms > 5000
    assert record.billable is True and record.reason == "billable", record.rule
    print(f"push-to-talk: connect_ms={m.connect_ms:.0f}, mic on after {talk_delay_ms} ms")


async def test_closed_tab_ends_the_call_within_5_s(make_server, tmp_path, speech_file, http):
    """Close the tab mid-call: the record is completed within 5 s, its
    duration is the call's real length, and on a concurrency-1 plan the
    next call is admitted right after."""
    server = await make_server(plan="free", webrtc={"host_addresses": ["127.0.0.1"]})
    async with app_origin(server) as app, browser(tmp_path, speech_file) as context:
        page = await open_call(context, app.url + "/guide.html")
        await wait_types(page, "session.created")
        location = await page.evaluate("window.call.location")
        posted_at_ms = await page.evaluate("window.offerPostedAt")
        await asyncio.sleep(4 * SLOW)
        closed_at_ms = time.time() * 1000
        await page.close()
        sid = "sess_" + call_id_of(location)[4:]
        deadline = time.monotonic() + 5
        record = await server.store.get_session(sid)
        while record.status != "completed" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            record = await server.store.get_session(sid)
        finalized_s = time.monotonic() - (deadline - 5)
        assert record.status == "completed", f"still {record.status} 5 s after the tab closed"
        real_ms = closed_at_ms - posted_at_ms
        m = record.measurements
        assert abs(m.duration_ms - real_ms) <= 1500, (m.duration_ms, real_ms)
        assert m.closed_by == "client", m.close_reason
        # the concurrency-1 plan's slot is free again: the next call is admitted
        page2 = await open_call(context, app.url + "/guide.html")
        assert await page2.evaluate("window.call.status") == 201
        await page2.close()
    await all_calls_ended(server)
    print(f"closed tab: finalized {finalized_s:.1f} s after close, duration {m.duration_ms:.0f} ms"
          f" vs real {real_ms:.0f} ms; {m.close_reason}")


async def test_origin_allowlist(make_server, tmp_path, speech_file, http):
    """A project that lists its origins: its ephemeral keys work from those
    pages and are refused (403, readable by the page) from any other, on
    calls and WebSocket upgrades alike."""
    server = await make_server(webrtc={"host_addresses": ["127.0.0.1"]})
    async with app_origin(server) as allowed, app_origin(server) as other, \
            browser(tmp_path, speech_file) as context:
        r = await http.patch(server.url + f"/v1/projects/{server.project_id}",
                             json={"allowed_origins": [allowed.url.upper() + "/"]},
                             headers={"Authorization": f"Bearer {server.admin_key}"})
        body = await r.json()
        assert r.status == 200, body
        assert body["allowed_origins"] == [allowed.url]
        page = await context.new_page()
        await page.goto(other.url + "/guide.html")
        await page.wait_for_function("window.error !== null", timeout=15_000 * SLOW)
        refused = await page.evaluate("window.call")
        assert refused["status"] == 403, refused
        assert '"origin_not_allowed"' in refused["body"]
        page = await open_call(context, allowed.url + "/guide.html")
        await wait_types(page, "session.created")
        assert await page.evaluate("window.call.status") == 201
        await page.close()
        ek = allowed.minted[-1]["value"]
        protocols = ("realtime", f"openai-insecure-api-key.{ek}")
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused_ws:
            await http.ws_connect(server.ws_url, headers={"Origin": other.url},
                                  protocols=protocols)
        assert refused_ws.value.status == 403
        async with http.ws_connect(server.ws_url, headers={"Origin": allowed.url},
                                   protocols=protocols) as ws:
            assert (await ws.receive_json())["type"] == "session.created"
    await all_calls_ended(server)


async def test_sideband_controls_the_browser_call(make_server, tmp_path, speech_file, http):
    """The app's server joins the browser's call with the ``openai`` SDK
    (``realtime.connect(call_id=…)``): it receives the call's events, and
    its ``response.create`` makes the browser hear a reply. One session,
    one record."""
    server = await make_server(webrtc={"host_addresses": ["127.0.0.1"]})
    no_vad = {"type": "realtime", "model": "gpt-realtime",
              "audio": {"input": {"turn_detection": None}}}
    async with app_origin(server, session=no_vad) as app, \
            browser(tmp_path, speech_file) as context:
        page = await open_call(context, app.url + "/guide.html")
        await wait_types(page, "session.created")
        call_id = call_id_of(await page.evaluate("window.call.location"))
        client = AsyncOpenAI(api_key=server.key, base_url=server.url + "/v1")
        seen: list[str] = []
        async with client.realtime.connect(call_id=call_id) as conn:
            await conn.response.create(response={"instructions": "Say hello to the caller."})
            async for event in conn:
                seen.append(event.type)
                if event.type == "response.done":
                    break
        await page.wait_for_function(
            "window.types().includes('response.done')"
            " && window.types().includes('output_audio_buffer.started')", timeout=30_000 * SLOW)
        await page.wait_for_function("window.packetsReceived().then(n => n > 50)",
                                     timeout=20_000 * SLOW)
        r = await http.post(server.url + f"/v1/realtime/calls/{call_id}/hangup",
                            headers={"Authorization": f"Bearer {server.key}"})
        assert r.status == 200
    assert "response.created" in seen and "response.done" in seen
    sessions = await server.store.list_sessions(account_id=server.account_id)
    assert len(sessions) == 1
    record = await server.session(sessions[0].id)
    assert record.measurements.event_counts.get("response.create") == 1
    assert record.measurements.responses == 1
    await assert_nothing_left(server)


async def test_agents_sdk_webrtc_transport(make_server, tmp_path, speech_file, http):
    """``@openai/agents-realtime``'s ``OpenAIRealtimeWebRTC`` with only
    ``baseUrl`` changed: ``session.connect()`` resolves (on the
    ``session.updated`` that answers its own ``session.update``) and the
    agent's reply audio plays."""
    from tests.webrtc.app_origin import AGENTS_BUNDLE

    if not AGENTS_BUNDLE.exists():
        pytest.fail("the Agents SDK bundle is missing: run `bash scripts/js-bundle.sh` "
                    "(`make test` does)", pytrace=False)
    server = await make_server(webrtc={"host_addresses": ["127.0.0.1"]})
    async with app_origin(server) as app, browser(tmp_path, speech_file) as context:
        page = await context.new_page()
        logs: list[str] = []
        page.on("console", lambda m: logs.append(f"{m.type}: {m.text}"))
        await page.goto(app.url + "/agents.html")
        await page.wait_for_function("['connected', 'failed'].includes(window.agents.state)",
                                     timeout=20_000 * SLOW)
        state = await page.evaluate("({state: window.agents.state, error: window.agents.error,"
                                    " callId: window.agents.callId,"
                                    " connectMs: window.agents.connectMs})")
        assert state["state"] == "connected" and state["error"] is None, (state, logs)
        assert state["callId"].startswith("rtc_")  # read from the exposed Location header
        assert state["connectMs"] < 4000, state  # no wait for the SDK's 5 s fallback
        await page.wait_for_function(
            "window.agents.eventTypes.includes('response.done') && window.agents.audioPlaying",
            timeout=60_000 * SLOW)
        await page.wait_for_function("window.agents.packetsReceived().then(n => n > 50)",
                                     timeout=20_000 * SLOW)
        errors = await page.evaluate("window.agents.errors")
        r = await http.post(server.url + f"/v1/realtime/calls/{state['callId']}/hangup",
                            headers={"Authorization": f"Bearer {server.key}"})
        assert r.status == 200
    assert errors == [], errors
    record = await server.session("sess_" + state["callId"][4:])
    assert record.transport == "webrtc" and record.measurements.responses >= 1
    assert record.measurements.connect_ms is not None and record.measurements.connect_ms < 2000
    await assert_nothing_left(server)
    print(f"agents sdk: connect() {state['connectMs']} ms, record {record.reason}")


async def test_relay_only_browser_through_coturn(make_server, tmp_path, speech_file, http,
                                                 turn_server):
    """Chromium restricted to TURN (``iceTransportPolicy: "relay"``) with the
    credentials minted with its ephemeral key: the call goes through a real
    coturn and is recorded with pair type ``relay``."""
    url, secret = turn_server
    server = await make_server(webrtc={"host_addresses": ["127.0.0.1"], "turn_urls": [url],
                                       "turn_secret": secret, "turn_ttl_s": 600})
    async with app_origin(server) as app, browser(tmp_path, speech_file) as context:
        page = await open_call(context, app.url + "/relay.html")
        offer = await page.evaluate("window.call.offer")
        assert "typ relay" in offer and "typ host" not in offer
        await wait_types(page, "session.created")
        await page.wait_for_function("window.packetsReceived().then(n => n > 50)",
                                     timeout=20_000 * SLOW)
        location = await page.evaluate("window.call.location")
        r = await http.post(server.url + location + "/hangup",
                            headers={"Authorization": f"Bearer {server.key}"})
        assert r.status == 200
    record = await server.session("sess_" + call_id_of(location)[4:])
    assert record.measurements.ice_pair_type == "relay"
    assert record.measurements.connect_ms is not None and record.measurements.connect_ms < 2000
    await assert_nothing_left(server)
