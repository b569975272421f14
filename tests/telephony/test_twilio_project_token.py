"""A project's own Twilio auth token: ``PATCH /v1/projects/{id}``
``{"twilio_auth_token": …}`` (sealed like BYOK keys), the stream's upgrade
``X-Twilio-Signature`` checked at ``start`` with the token of the project
the key names (the server-wide token the fallback), and every refused call
written to the audit log. Real voxgate on loopback, the local provider,
real speech as 8 kHz μ-law, records in a real SQLite store."""

from __future__ import annotations

import orjson
import pytest
from cryptography.fernet import Fernet

from tests.telephony.conftest import twilio_url
from tests.telephony.test_twilio_calls import no_session_left, wait_closed
from tests.telephony.twilio_client import TwilioStream
from voxgate.proxy.telephony.call_auth import AUDIT_ACTION, RefusalLog
from voxgate.proxy.telephony.twilio_protocol import compute_signature
from voxgate.web.state import WEB

PROJECT_TOKEN = "0123456789abcdef0123456789abcdef"  # Twilio's shape: 32 hex digits
SERVER_TOKEN = "fedcba9876543210fedcba9876543210"


async def _server(make_phone_server, **overrides):
    return await make_phone_server(upstream={"provider_key_secret": Fernet.generate_key().decode()},
                                   **overrides)


async def _set_token(http, server, token):
    async with http.patch(f"{server.url}/v1/projects/{server.project_id}",
                          json={"twilio_auth_token": token},
                          headers={"Authorization": f"Bearer {server.admin_key}"}) as resp:
        return resp.status, await resp.json()


async def _call(http, server, signature: str | None, *, key: str | None = None,
                call_sid: str = "CA" + "a" * 32, speech: bytes = b"") -> TwilioStream:
    url = twilio_url(server)
    call = TwilioStream(url, {"authorization": f"Bearer {key or server.key}"}, call_sid=call_sid,
                        headers={"X-Twilio-Signature": signature} if signature else {})
    await call.connect(http)
    await call.start()
    if speech:
        await call.stream(speech)
    await call.silence(200)
    if not call.closed.is_set():
        await call.stop()
    await wait_closed(call)
    await call.close()
    return call


async def _refusals(server) -> list:
    return [e for e in await server.app[WEB].db.audit_entries() if e.action == AUDIT_ACTION]


async def test_project_token_stored_sealed_and_shown_as_last4(make_phone_server, http):
    server = await _server(make_phone_server)
    status, body = await _set_token(http, server, PROJECT_TOKEN)
    assert status == 200 and body["twilio_auth_token_last4"] == "cdef", body
    assert PROJECT_TOKEN not in orjson.dumps(body).decode()
    project = await server.store.get_project(server.project_id)
    assert project.twilio_token_sealed and PROJECT_TOKEN not in project.twilio_token_sealed
    assert PROJECT_TOKEN not in repr(project)
    async with http.get(f"{server.url}/v1/projects/{server.project_id}",
                        headers={"Authorization": f"Bearer {server.key}"}) as resp:
        assert (await resp.json())["twilio_auth_token_last4"] == "cdef"
    status, body = await _set_token(http, server, "short")
    assert status == 400 and body["error"]["param"] == "twilio_auth_token"
    status, body = await _set_token(http, server, None)
    assert status == 200 and body["twilio_auth_token_last4"] is None


async def test_project_token_needs_the_servers_secret(make_phone_server, http):
    server = await make_phone_server()
    status, body = await _set_token(http, server, PROJECT_TOKEN)
    assert status == 403 and body["error"]["code"] == "twilio_token_disabled"
    assert "provider_key_secret" in body["error"]["message"]


async def test_signed_with_the_projects_token_the_call_proceeds(make_phone_server, http,
                                                                 question_ulaw):
    server = await _server(make_phone_server)
    assert (await _set_token(http, server, PROJECT_TOKEN))[0] == 200
    url = twilio_url(server)
    call = await _call(http, server, compute_signature(PROJECT_TOKEN, url), speech=question_ulaw)
    assert call.close_code == 1000, call.close_reason
    records = await server.store.list_sessions(server.account_id)
    assert [(r.transport, r.call_sid) for r in records] == [("twilio", call.call_sid)]
    record = await server.session(records[0].id)
    assert abs(record.measurements.audio_in_ms - call.sent_audio_bytes / 8) <= 20
    assert await _refusals(server) == []


@pytest.mark.parametrize("signature", ["another-token", None])
async def test_wrong_or_missing_signature_refused_nothing_billed(make_phone_server, http,
                                                                 signature):
    server = await _server(make_phone_server)
    assert (await _set_token(http, server, PROJECT_TOKEN))[0] == 200
    url = twilio_url(server)
    call = await _call(http, server,
                       compute_signature(signature, url) if signature else None)
    assert call.close_code == 1008
    assert call.close_reason.startswith("invalid_twilio_signature: "), call.close_reason
    assert "the project's Twilio auth token" in call.close_reason
    assert not [f for f in call.received if f["event"] == "media"]
    await no_session_left(server)
    assert await server.store.list_sessions(server.account_id) == []
    # the attempt, where operators see it (/admin/audit), without the key
    [entry] = await _refusals(server)
    assert entry.actor == "twilio" and entry.account_id == server.account_id
    detail = entry.detail if isinstance(entry.detail, dict) else orjson.loads(entry.detail)
    assert detail["call_sid"] == call.call_sid and detail["stream_sid"] == call.stream_sid
    assert detail["code"] == "invalid_twilio_signature" and detail["close_code"] == 1008
    assert detail["project_id"] == server.project_id and detail["account_sid"] == call.account_sid
    assert server.key not in orjson.dumps(detail).decode()


async def test_server_token_is_the_fallback(make_phone_server, http, monkeypatch):
    """With a server-wide token too: a project with its own token is checked
    with its own (the server's does not do), a project without one with the
    server's; an upgrade with no signature at all is refused at once."""
    monkeypatch.setenv("VOXGATE_TELEPHONY__TWILIO_AUTH_TOKEN", SERVER_TOKEN)
    server = await _server(make_phone_server)
    url = twilio_url(server)
    other_project = await server.store.create_project(server.account_id, "other")
    _, other_key = await server.store.create_api_key(other_project.id, "other")
    # no project token yet: the server's token decides
    ok = await _call(http, server, compute_signature(SERVER_TOKEN, url), call_sid="CA" + "b" * 32)
    assert ok.close_code == 1000, ok.close_reason
    bad = await _call(http, server, compute_signature(PROJECT_TOKEN, url),
                      call_sid="CA" + "c" * 32)
    assert bad.close_code == 1008 and "the server's Twilio auth token" in bad.close_reason
    # the project's own token from now on; the other project keeps the server's
    assert (await _set_token(http, server, PROJECT_TOKEN))[0] == 200
    own = await _call(http, server, compute_signature(PROJECT_TOKEN, url), call_sid="CA" + "d" * 32)
    assert own.close_code == 1000, own.close_reason
    server_signed = await _call(http, server, compute_signature(SERVER_TOKEN, url),
                                call_sid="CA" + "e" * 32)
    assert server_signed.close_code == 1008
    assert server_signed.close_reason.startswith("invalid_twilio_signature: ")
    other = await _call(http, server, compute_signature(SERVER_TOKEN, url), key=other_key,
                        call_sid="CA" + "f" * 32)
    assert other.close_code == 1000, other.close_reason
    await no_session_left(server)
    records = await server.store.list_sessions(server.account_id)
    assert sorted(r.call_sid for r in records) == ["CA" + c * 32 for c in "bdf"]
    refused = await _refusals(server)
    assert sorted(e.detail["call_sid"] for e in refused) == ["CA" + c * 32 for c in "ce"]


async def test_refused_unauthenticated_call_recorded(make_phone_server, http):
    """A missing key: closed 1008 ``invalid_api_key``, nothing billed, the
    attempt in the audit log with the call's ids (no account: no key named
    one)."""
    server = await make_phone_server()
    call = TwilioStream(twilio_url(server), {}, call_sid="CA" + "9" * 32)
    await call.connect(http)
    await call.start()
    await wait_closed(call)
    await call.close()
    assert call.close_code == 1008 and call.close_reason.startswith("invalid_api_key: ")
    await no_session_left(server)
    assert await server.store.list_sessions(server.account_id) == []
    [entry] = await _refusals(server)
    assert entry.account_id is None
    assert entry.detail["call_sid"] == call.call_sid
    assert entry.detail["stream_sid"] == call.stream_sid
    assert entry.detail["code"] == "invalid_api_key" and entry.detail["close_code"] == 1008


async def test_refusal_log_is_rate_capped():
    """An unauthenticated flood cannot fill the audit log: at most
    ``per_minute`` rows a minute, the next row says how many were skipped."""
    rows: list = []

    class Store:
        async def audit(self, actor, action, account_id, detail=None):
            rows.append(detail)

    now = [0.0]
    refusals = RefusalLog(per_minute=2, clock=lambda: now[0])
    for _ in range(5):
        await refusals.record(Store(), account_id=None, close_code=1008, code="x", message="m")
    assert len(rows) == 2 and refusals.skipped == 3
    now[0] = 61.0
    assert await refusals.record(Store(), account_id=None, close_code=1008, code="x", message="m")
    assert rows[-1]["skipped_before"] == 3 and refusals.skipped == 0


async def test_protocol_refusal_before_start_recorded(make_phone_server, http):
    """A ``media`` before ``start``: 1008 ``twilio protocol error: …``, the
    attempt recorded with its code and stream (no call yet)."""
    server = await make_phone_server()
    call = TwilioStream(twilio_url(server), {})
    await call.connect(http)
    await call.connected()
    await call.send(call.media_message(b"\xff" * 160))
    await wait_closed(call)
    await call.close()
    assert call.close_code == 1008 and call.close_reason.startswith("twilio protocol error: ")
    [entry] = await _refusals(server)
    assert entry.account_id is None and entry.detail["close_code"] == 1008
    assert entry.detail["code"] == call.close_reason.split(": ")[1]
    assert "call_sid" not in entry.detail
