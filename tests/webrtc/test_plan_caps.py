"""A plan's ``max_session_s`` on a WebRTC call (issue 21, item 4): 20 s of
real speech from an aiortc client on a plan of ``max_session_s = 6``; at
6 s the ``session_expired`` error event arrives on ``oai-events`` (and on
an attached sideband socket, before its close), then the call is hung up, recorded ``closed_by: "server"``, reason
``max_session_s``, and billable (the session worked)."""

from __future__ import annotations

import asyncio

from tests.conftest import SLOW
from tests.economics.test_plan_caps import EXPIRED, LIMIT_S, SIX_S_CATALOG, TOLERANCE_S
from tests.webrtc.client import Client
from tests.webrtc.test_calls import assert_nothing_left


async def test_six_second_plan_hangs_up_a_call_after_session_expired(make_server, rtc_settings,
                                                                    http, jfk48, tmp_path):
    catalog = tmp_path / "six.toml"
    catalog.write_text(SIX_S_CATALOG)
    server = await make_server("six", catalog=str(catalog), **rtc_settings)
    client = Client(server.url, jfk48 * 2)  # 22 s of speech
    sideband: list[dict] = []
    try:
        await client.connect(http, server.key)
        async with http.ws_connect(server.ws_url + f"?call_id={client.call_id}",
                                   headers={"Authorization": f"Bearer {server.key}"}) as ws:
            async with asyncio.timeout((LIMIT_S + 10) * SLOW):
                async for msg in ws:
                    sideband.append(msg.json())
            sideband_close = ws.close_code
        expired = await client.wait_event("error", 5)
        at_s = client.arrivals[client.events.index(expired)] - (client.posted_at or 0.0)
        await asyncio.wait_for(client.closed.wait(), 5 * SLOW)  # hung up
        record = await server.session(client.session_id)
        spoken_s = client.track.index * 0.02
    finally:
        await client.close()
    assert expired["error"] == EXPIRED
    # the limit runs from the offer (the session's start), as the record's duration
    assert abs(at_s - LIMIT_S) <= TOLERANCE_S * SLOW, at_s
    # nothing came after it but the end of the call (and the output buffer's
    # own end, had a reply been playing)
    after = client.types()[client.events.index(expired) + 1:]
    assert all(t.startswith("output_audio_buffer.") for t in after), after
    assert [e for e in client.events if e["type"] == "error"] == [expired]
    assert sideband[-1] == expired and sideband_close == 1000, (sideband[-3:], sideband_close)
    assert spoken_s < 2 * 11.0 - 5  # the speech was cut short by the hang-up
    m = record.measurements
    assert record.transport == "webrtc"
    assert (m.closed_by, m.close_reason, m.close_code) == ("server", "max_session_s", 1000)
    assert abs(m.duration_ms - LIMIT_S * 1000) <= TOLERANCE_S * 1000 * SLOW, m.duration_ms
    assert m.audio_in_ms > 4000, m.audio_in_ms  # the speech from media ready to the limit
    assert (record.billable, record.reason) == (True, "billable"), record.rule
    await assert_nothing_left(server)
    print(f"session_expired at {at_s:.3f} s after the offer; duration_ms={m.duration_ms:.0f} "
          f"audio_in_ms={m.audio_in_ms:.0f} audio_out_ms={m.audio_out_ms:.0f} "
          f"connect_ms={m.connect_ms}")
