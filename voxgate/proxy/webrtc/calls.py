"""The HTTP side of WebRTC calls: the routes below, each a thin handler
around :class:`voxgate.proxy.webrtc.call.Call`.

Routes (https://platform.openai.com/docs/guides/realtime-webrtc):

- ``POST /v1/realtime/calls`` — the SDP offer, either raw
  (``Content-Type: application/sdp``, an ephemeral key or API key) or the
  "unified interface" (``multipart/form-data`` with an ``sdp`` part and an
  optional JSON ``session`` part, a project API key) → ``201`` with the SDP
  answer and ``Location: /v1/realtime/calls/rtc_…``.
- ``POST /v1/realtime/calls/{call_id}/hangup``, ``DELETE /v1/realtime/calls/{call_id}``
- ``GET  /v1/realtime/calls/{call_id}`` — the call's session record.
- ``GET  /v1/realtime/ice_servers`` — STUN/TURN servers with fresh TURN
  credentials (also added to minted client secrets as ``ice_servers``).
- ``GET  /v1/realtime?call_id=rtc_…`` (WebSocket, via ``ws_relay``) — sideband
  control of an active call with a key of its project
  (https://platform.openai.com/docs/guides/realtime-server-controls).

With several processes (Redis admission) a hang-up or sideband attach of a
call held by another process is routed to it (``voxgate.proxy.cluster``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiortc.exceptions import InternalError as AiortcInternalError

from voxgate.errors import (
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    VoxgateError,
    dependency_error,
)
from voxgate.metering.meter import SERVER, SHUTDOWN
from voxgate.proxy import tokens
from voxgate.proxy.auth import authenticate, session_model
from voxgate.proxy.gateway import Gateway, monotonic_ms
from voxgate.proxy.http import json_response
from voxgate.proxy.keys import CLUSTER, CONNECTOR, GATEWAY, SETTINGS
from voxgate.proxy.telephony.sip import SIP_CALLS
from voxgate.proxy.webrtc import ice
from voxgate.proxy.webrtc.call import CALLS, Call, session_id_of
from voxgate.proxy.webrtc.sdp import InvalidSdp, check_offer
from voxgate.proxy.webrtc.turn import client_ice_servers
from voxgate.proxy.ws_relay import CALL_ATTACH, SESSION_ID_HEADER

__all__ = ["setup", "create_call", "sideband", "hangup_call", "get_call", "ice_servers"]


def setup(app: web.Application) -> None:
    """Add the call routes and the ``ice_servers`` hook of minted keys."""
    ice.install()
    app[CALLS] = {}
    app[tokens.ICE_SERVERS_HOOK] = _ice_servers_hook
    app.router.add_post("/v1/realtime/calls", create_call)
    app.router.add_get("/v1/realtime/calls/{call_id}", get_call)
    app.router.add_post("/v1/realtime/calls/{call_id}/hangup", hangup_call)
    app.router.add_delete("/v1/realtime/calls/{call_id}", hangup_call)
    app.router.add_get("/v1/realtime/ice_servers", ice_servers)
    app[CALL_ATTACH] = sideband
    app.on_shutdown.append(_close_calls)


# -- handlers ------------------------------------------------------------------


async def create_call(request: web.Request) -> web.Response:
    """``POST /v1/realtime/calls``.

    Raises (rendered as JSON):
        AuthenticationError, EphemeralKeyExpired, PermissionDenied (401/403);
        InvalidSdp (400: not SDP, no audio m-line, no Opus), InvalidRequest
        (400: other content types, a bad ``session`` part, ``model_mismatch``
        / ``model_not_allowed``); RateLimited,
        QuotaExceeded, ConcurrencyLimited (429); ServiceUnavailable (503:
        draining, Redis or the database down, media cannot be set up).
    """
    offer_ms = monotonic_ms()
    gw: Gateway = request.app[GATEWAY]
    ctype = request.content_type
    if ctype == "multipart/form-data":
        principal = await authenticate(request, gw.store, allow_ephemeral=False)
        text, session = await _read_multipart(request)
    elif ctype == "application/sdp":
        principal = await authenticate(request, gw.store, allow_ephemeral=True)
        text = await request.text()
        session = dict(principal.ephemeral.session) if principal.ephemeral else {}
    else:
        await authenticate(request, gw.store, allow_ephemeral=True)
        raise InvalidRequest(
            f"unsupported Content-Type {ctype!r}: send the SDP offer as application/sdp "
            "or multipart/form-data with an 'sdp' part", code="unsupported_content_type")
    part_model = session.get("model") if ctype == "multipart/form-data" else None
    upstream = gw.settings.upstream
    model = session_model(principal,
                          request.query.get("model") or (
                              part_model if isinstance(part_model, str) else None),
                          upstream.default_model, upstream.allowed_models)
    offer = check_offer(text)
    active = await gw.admit(principal, "webrtc", model)
    try:
        call = Call(gw, request.app[CONNECTOR], active, offer, model, session,
                    dict(request.query), offer_ms)
    except BaseException:
        await gw.finish(active)
        raise
    try:
        answer = await call.answer()
    except BaseException as exc:
        await call.abort(f"answer failed: {type(exc).__name__}: {exc}")
        if isinstance(exc, VoxgateError):
            raise
        if (unavailable := dependency_error(exc)) is not None \
                or isinstance(exc, (OSError, AiortcInternalError)):
            # aiortc could not set up media (no UDP port, an internal error): not the offer's fault
            raise (unavailable or ServiceUnavailable("WebRTC media cannot be set up now")) from exc
        if isinstance(exc, Exception):
            raise InvalidSdp(f"cannot answer the SDP offer: {exc}", param="sdp") from exc
        raise
    calls: dict[str, Call] = request.app[CALLS]
    calls[call.id] = call
    call.start(on_done=lambda: calls.pop(call.id, None))
    return web.Response(
        status=201, text=answer, content_type="application/sdp",
        headers={"Location": f"/v1/realtime/calls/{call.id}",
                 SESSION_ID_HEADER: active.record.id},
    )


async def sideband(request: web.Request) -> web.StreamResponse:
    """``GET /v1/realtime?call_id=rtc_…`` (WebSocket): attach the app's
    server to an active call, as OpenAI's server-side controls
    (https://platform.openai.com/docs/guides/realtime-server-controls).
    Needs a project API key of the call's project. No admission and no new
    session: the socket's events are metered as the call's. The socket is
    closed with 1000 and a reason when the call ends.

    Raises (before the upgrade, as JSON):
        AuthenticationError (401: no key, an ephemeral key), PermissionDenied
        (403: a key of another project), NotFound (404: unknown or ended call).
    """
    gw: Gateway = request.app[GATEWAY]
    principal = await authenticate(request, gw.store, allow_ephemeral=False)
    call_id = request.query.get("call_id", "")
    call: Call | None = request.app[CALLS].get(call_id)
    cluster = request.app.get(CLUSTER)
    if call is None and cluster is not None:  # held by another process?
        remote = await cluster.attach(call_id, principal.project.id)
        ws = web.WebSocketResponse(protocols=("realtime",), heartbeat=20.0,
                                   max_msg_size=gw.settings.relay.max_message_bytes)
        ws.headers[SESSION_ID_HEADER] = remote.session_id
        await ws.prepare(request)
        await remote.run(ws)
        return ws
    if call is None or call.done:
        raise NotFound(f"no active call {call_id!r}", param="call_id")
    if call.active.record.project_id != principal.project.id:
        raise PermissionDenied(f"call {call_id!r} belongs to another project", param="call_id")
    ws = web.WebSocketResponse(protocols=("realtime",), heartbeat=20.0,
                               max_msg_size=gw.settings.relay.max_message_bytes)
    ws.headers[SESSION_ID_HEADER] = call.active.record.id
    await ws.prepare(request)
    await call.attach(ws)
    return ws


async def hangup_call(request: web.Request) -> web.Response:
    """``POST /v1/realtime/calls/{call_id}/hangup`` and ``DELETE …/{call_id}``:
    end the call and wait until its session is recorded."""
    call_id, principal = await _call_principal(request)
    call: Call | None = request.app[CALLS].get(call_id)
    sip_calls = request.app.get(SIP_CALLS)  # OpenAI SIP calls have rtc_ ids too
    if call is None and sip_calls is not None and await sip_calls.hangup(call_id, principal):
        return web.Response(status=200)
    cluster = request.app.get(CLUSTER)
    if call is None and cluster is not None:  # held by another process?
        await cluster.hangup(call_id, principal.project.id)
        return web.Response(status=200)
    if call is None or call.active.record.project_id != principal.project.id:
        raise NotFound(f"no active call {call_id!r}", param="call_id")
    await call.hangup()
    return web.Response(status=200)


async def get_call(request: web.Request) -> web.Response:
    """``GET /v1/realtime/calls/{call_id}``: the call's session record
    (``SessionRecord.to_api()``), for a key of the call's project."""
    call_id, principal = await _call_principal(request)
    sid = session_id_of(call_id)
    record = await request.app[GATEWAY].store.get_session(sid) if sid else None
    if record is None or record.project_id != principal.project.id:
        raise NotFound(f"no call {call_id!r}", param="call_id")
    return json_response({"call_id": call_id, **record.to_api()})


async def ice_servers(request: web.Request) -> web.Response:
    """``GET /v1/realtime/ice_servers`` (ephemeral key) →
    ``{"ice_servers": [{"urls", "username", "credential"}]}``."""
    gw: Gateway = request.app[GATEWAY]
    principal = await authenticate(request, gw.store, allow_ephemeral=True, allow_api_key=False)
    return json_response({"ice_servers": client_ice_servers(gw.settings.webrtc,
                                                            principal.project.id)})


def _ice_servers_hook(app: web.Application, project_id: str) -> list[dict[str, Any]]:
    return client_ice_servers(app[SETTINGS].webrtc, project_id)


async def _call_principal(request: web.Request):
    principal = await authenticate(request, request.app[GATEWAY].store, allow_ephemeral=True)
    return request.match_info["call_id"], principal


async def _read_multipart(request: web.Request) -> tuple[str, dict[str, Any]]:
    """The ``sdp`` and optional ``session`` parts of the unified interface."""
    sdp: str | None = None
    session: dict[str, Any] = {}
    try:
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, aiohttp.BodyPartReader):
                continue
            if part.name == "sdp":
                sdp = await part.text()
            elif part.name == "session":
                raw = await part.read()
                try:
                    value = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    raise InvalidRequest(f"the 'session' part is not valid JSON: {exc}",
                                         code="invalid_json", param="session") from exc
                if not isinstance(value, dict):
                    raise InvalidRequest("the 'session' part must be a JSON object",
                                         param="session")
                session = value
    except (ValueError, AssertionError) as exc:
        raise InvalidRequest(f"invalid multipart body: {exc}") from exc
    if sdp is None:
        raise InvalidSdp("the multipart body has no 'sdp' part", param="sdp")
    return sdp, session


async def _close_calls(app: web.Application) -> None:
    calls: dict[str, Call] = app[CALLS]
    await asyncio.gather(*(c.hangup(SERVER, 1001, SHUTDOWN)
                           for c in list(calls.values())), return_exceptions=True)


