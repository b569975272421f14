"""The voice page in headless Chromium: fake microphone playing real speech,
WebRTC to voxgate over loopback, the reply transcript on the page, audio
received, and a billable session recorded."""

from __future__ import annotations

import asyncio
import time

from tests.conftest import SLOW
from tests.webrtc.conftest import ARTIFACTS, require
from tests.webrtc.test_calls import assert_nothing_left

CHROMIUM = "/usr/bin/chromium"


def chromium_args(wav) -> list[str]:
    return [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--allow-loopback-in-peer-connection", "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream", f"--use-file-for-fake-audio-capture={wav}%noloop",
        "--autoplay-policy=no-user-gesture-required",
    ]


def speech_wav(path, speech_dir) -> None:
    """jfk.flac at 48 kHz, with a second of silence around it (played once)."""
    from voxgate.voice.audio import load_pcm16, pcm16_to_wav

    pcm = load_pcm16(speech_dir / "jfk.flac", 48000)
    silence = bytes(48000 * 2)
    path.write_bytes(pcm16_to_wav(silence + pcm + silence, 48000))


async def test_voice_page_call_in_chromium(make_server, rtc_settings, tmp_path, speech_dir):
    require(CHROMIUM, "chromium")
    from playwright.async_api import async_playwright

    server = await make_server(**rtc_settings)
    wav = tmp_path / "speech.wav"
    speech_wav(wav, speech_dir)
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
            args=chromium_args(wav), viewport={"width": 390, "height": 844},
            # the page's CSP forbids eval; Playwright's string predicates need it
            bypass_csp=True,
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            logs: list[str] = []
            page.on("console", lambda m: logs.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: logs.append(f"pageerror: {e}"))
            await page.goto(server.url + "/voice?loopback=1")
            started = time.monotonic()
            await page.click("#connect")
            await page.wait_for_function(
                "['connected', 'completed'].includes(window.voxgate.state)"
                " || window.voxgate.error", timeout=15_000 * SLOW)
            error = await page.evaluate("window.voxgate.error")
            assert error is None, (error, logs)
            connected_s = time.monotonic() - started
            await page.wait_for_function(
                "[...document.querySelectorAll('#transcript li.assistant')]"
                ".some(li => li.textContent.trim().length > 0)", timeout=60_000 * SLOW)
            user_said = await page.locator("#transcript li.user").all_inner_texts()
            assistant = await page.locator("#transcript li.assistant").all_inner_texts()
            await page.wait_for_function("window.voxgate.call.packetsReceived()"
                                         ".then(n => n > 50)", timeout=10_000 * SLOW)
            packets = await page.evaluate("window.voxgate.call.packetsReceived()")
            call_id = await page.evaluate("window.voxgate.call.callId")
            await page.click("#hangup")
            await page.wait_for_function("window.voxgate.record !== null", timeout=10_000 * SLOW)
            shown = await page.locator("#verdict").inner_text()
            await page.screenshot(path=str(ARTIFACTS / "voice-call.png"), full_page=True)
            record = await page.evaluate("window.voxgate.record")
        finally:
            await context.close()
    assert call_id.startswith("rtc_")
    assert any(t.strip() for t in user_said), user_said  # the provider heard speech
    assert assistant and packets > 50
    assert record["transport"] == "webrtc"
    assert record["billable"] is True and record["reason"] == "billable", record["rule"]
    # Chromium may check from a socket of another interface: voxgate then
    # learns its address as peer-reflexive. Either way a direct path.
    assert record["ice_pair_type"] in ("host", "prflx")
    assert record["connect_ms"] is not None and record["connect_ms"] < 2000
    assert shown.startswith("Billable")
    stored = await server.session(record["id"])
    assert stored.billable is True and stored.measurements.closed_by == "client"
    await assert_nothing_left(server)
    print(f"browser: connected in {connected_s * 1000:.0f} ms (page), "
          f"connect_ms={record['connect_ms']}, packets={packets}, assistant={assistant[:1]}")
    await asyncio.sleep(0)
