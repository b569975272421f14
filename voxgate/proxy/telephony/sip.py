"""OpenAI SIP calls through voxgate (issue 22, item 2): the webhook that
decides each call, the call control that carries the decision out, and the
sideband that meters the call. docs/telephony-sip.md is the guide.

Routes:

- ``POST /v1/telephony/openai/webhook`` — OpenAI's ``realtime.call.incoming``
  deliveries (the OpenAI project's webhook points here).
- ``POST /v1/realtime/calls/{call_id}/refer`` — transfer a SIP call
  (``{"target_uri": "tel:…" | "sip:…"}``), a project API key of the call's
  project; relayed to OpenAI.
- ``POST /v1/realtime/calls/{call_id}/hangup`` — end a SIP call; served by
  the WebRTC calls' handler, which hands SIP call ids to
  ``SipCalls.hangup`` (``SIP_CALLS``); added here only when no other
  handler serves the path (an app without WebRTC).

A delivery, in order (``webhook``):

1. The Standard Webhooks signature, with ``[sip] openai_webhook_secret``
   and ``tolerance_s`` (``sip_protocol.verify_signature``): a failure is
   HTTP 400 ``invalid_webhook_signature``, nothing done.
2. Other event types are acknowledged (200), nothing done.
3. Deduplication by ``webhook-id`` in the store (``SipCallsDB.claim_delivery``,
   shared by every voxgate process): a redelivery is acknowledged (200
   ``duplicate``), no second accept or reject.
4. The route (``[[sip.routes]]``: a SIP header value or the called number →
   project); no route, or an unknown project: reject 404.
5. Admission as for every session (``Gateway.admit``, ``transport="sip"``,
   the project's own rate bucket): refused → ``POST …/reject`` with
   ``sip_protocol.reject_status`` (486 over concurrency or rate, 603 over
   quota or a closed account, 503 while voxgate cannot admit).
6. Admitted: the session's ``call_sid`` is OpenAI's ``call_id``; ``POST
   …/accept`` with the route's session config, ``type: "realtime"`` and the
   model; then the sideband WebSocket ``{upstream url}?call_id=…`` (both
   with the operator's key: the OpenAI project the trunk points at holds the
   call) is read and metered until it closes (``SipCall``), and the session
   finished (verdict, lease). A failed accept finishes the session at once
   (not billable); a network failure or 5xx of it forgets the delivery
   (HTTP 502) so that OpenAI's retry tries again.

Metering (``SipCall``): every sideband event is fed to the session meter
(``classify``; ``session.created``, ``response.done`` usage, errors,
transcription usage, the close); connect latency = delivery received →
the sideband's ``session.created`` (or its first event); duration = delivery
received → the sideband's close; audio in/out as the provider reports it
(``sip_protocol.ReportedAudio``: the caller's speech from
``input_audio_buffer.speech_started``/``speech_stopped`` positions, the
agent's audio from output audio tokens × 50 ms).

Call control URLs come from the upstream's realtime URL (``UpstreamConnector.url``,
``wss://api.openai.com/v1/realtime`` → ``https://api.openai.com/v1/realtime/calls/{call_id}/…``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import orjson
from aiohttp import WSMsgType, web

from voxgate.config import SipSettings
from voxgate.errors import (
    InvalidRequest,
    MessageTooLarge,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    UpstreamError,
    VoxgateError,
)
from voxgate.metering.events import OUTPUT_AUDIO_EVENTS, UPSTREAM, classify
from voxgate.metering.meter import CLIENT, SERVER, SessionMeter
from voxgate.models import Principal
from voxgate.proxy.auth import authenticate, session_model
from voxgate.proxy.gateway import ActiveSession, Gateway, monotonic_ms
from voxgate.proxy.http import json_response, read_json
from voxgate.proxy.keys import CONNECTOR, GATEWAY, SETTINGS
from voxgate.proxy.telephony.sip_protocol import (
    SIP_NOT_FOUND,
    IncomingCall,
    ReportedAudio,
    accept_body,
    parse_incoming,
    reject_status,
    route_call,
    valid_target_uri,
    verify_signature,
)
from voxgate.proxy.upstream import UpstreamConnector, upstream_end
from voxgate.store.queries.telephony import SIP_TRANSPORT, SipCallsDB

__all__ = ["setup", "routes", "webhook", "refer_call", "hangup_call", "SipCalls", "SipCall",
           "SIP_CALLS", "WEBHOOK_PATH", "TRANSPORT", "project_principal", "calls_url"]

log = logging.getLogger("voxgate.telephony.sip")

WEBHOOK_PATH = "/v1/telephony/openai/webhook"
HANGUP_PATH = "/v1/realtime/calls/{call_id}/hangup"
REFER_PATH = "/v1/realtime/calls/{call_id}/refer"
TRANSPORT = SIP_TRANSPORT
HANGUP_REASON = "hangup"  # the recorded close reason of a call hung up through voxgate
MAX_WEBHOOK_BYTES = 256 * 1024  # a delivery larger than this is refused (413)
_HANGUP_WAIT_S = 5.0  # a hang-up through voxgate waits this long for the call's record
DELIVERY_KEEP_S = 3 * 86400.0
"""How long a delivery's ``webhook-id`` is kept, seconds (3 days): past
the time OpenAI goes on retrying a delivery it did not see answered with a
2xx (exponential backoff, up to 72 hours), so a late retry accepts nothing
again."""


def calls_url(realtime_url: str, call_id: str, action: str) -> str:
    """``{realtime URL as http(s)}/calls/{call_id}/{action}``:
    ``wss://api.openai.com/v1/realtime`` → ``https://api.openai.com/v1/realtime/calls/…``."""
    base = realtime_url.split("?", 1)[0].rstrip("/")
    if base.startswith("wss://"):
        base = "https://" + base[6:]
    elif base.startswith("ws://"):
        base = "http://" + base[5:]
    return f"{base}/calls/{quote(call_id, safe='')}/{action}"


async def project_principal(gw: Gateway, project_id: str) -> Principal | None:
    """The caller of a session that no key opened (a SIP call routed to a
    project by the operator's configuration): the project and its account,
    no key (its requests count against the project's own rate bucket,
    ``Principal.rate_key``). None when the project or its account is gone.

    Raises:
        PermissionDenied: the account is closed.
    """
    project = await gw.store.get_project(project_id)
    if project is None:
        return None
    account = await gw.store.get_account(project.account_id)
    if account is None:
        return None
    if account.status == "canceled":
        raise PermissionDenied("this account is closed")
    return Principal(account=account, project=project)


class SipCalls:
    """The SIP calls of this process and the HTTP client of OpenAI's call
    control (``SIP_CALLS`` on the app).

    Attributes:
        calls: call_id → the call this process meters.
    """

    def __init__(self, app: web.Application, settings: SipSettings) -> None:
        self.app = app
        self.settings = settings
        self.calls: dict[str, SipCall] = {}
        self._http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()
        self._db: SipCallsDB | None = None

    @property
    def gateway(self) -> Gateway:
        return self.app[GATEWAY]

    @property
    def connector(self) -> UpstreamConnector:
        return self.app[CONNECTOR]

    @property
    def db(self) -> SipCallsDB:
        if self._db is None:
            self._db = SipCallsDB(self.gateway.store)
        return self._db

    def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                json_serialize=lambda o: orjson.dumps(o).decode())
        return self._http

    async def close(self) -> None:
        """Stop what is left of the calls' tasks (after the gateway has
        ended the sessions) and close the HTTP client."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- call control ----------------------------------------------------

    async def control(self, call_id: str, action: str,
                      body: dict[str, Any] | None = None) -> tuple[int, str]:
        """``POST …/calls/{call_id}/{action}`` to the provider with the
        operator's key; returns (HTTP status, body text, first 500 chars).

        Raises:
            UpstreamError: unreachable or timed out.
        """
        url = calls_url(self.connector.url, call_id, action)
        try:
            async with self.http().post(
                    url, json=body or {},
                    headers={"Authorization": f"Bearer {self.connector.api_key}"},
                    timeout=aiohttp.ClientTimeout(total=self.settings.control_timeout_s)) as resp:
                return resp.status, (await resp.text())[:500]
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(f"cannot reach the provider's call control ({action}): "
                                f"{type(exc).__name__}: {exc}") from exc

    async def reject(self, call_id: str, status_code: int) -> None:
        """``POST …/reject`` with ``status_code``; a failure is logged (the
        call then times out at OpenAI's side)."""
        try:
            status, text = await self.control(call_id, "reject", {"status_code": status_code})
        except UpstreamError as exc:
            log.warning("SIP call %s: reject %d not delivered: %s", call_id, status_code, exc)
            return
        if status >= 300:
            log.warning("SIP call %s: reject %d answered HTTP %d: %s", call_id, status_code,
                        status, text)

    async def open_sideband(self, call_id: str) -> aiohttp.ClientWebSocketResponse:
        """The sideband WebSocket of an accepted call: ``{upstream URL}?call_id=…``.

        Raises:
            UpstreamError: refused, unreachable or timed out.
        """
        url = f"{self.connector.url.split('?', 1)[0]}?{urlencode({'call_id': call_id})}"
        try:
            async with asyncio.timeout(self.connector.connect_timeout_s):
                return await self.http().ws_connect(
                    url, headers={"Authorization": f"Bearer {self.connector.api_key}"},
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                    max_msg_size=self.connector.max_message_bytes,
                    heartbeat=self.connector.heartbeat_s, compress=0)
        except aiohttp.WSServerHandshakeError as exc:
            raise UpstreamError(f"the provider refused the call's sideband (HTTP {exc.status})"
                                ) from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(f"cannot reach the call's sideband: {type(exc).__name__}: {exc}"
                                ) from exc

    # -- customers' call control -----------------------------------------

    async def _own_call(self, call_id: str, principal: Principal) -> bool:
        """Whether ``call_id`` is an active SIP call of the principal's project."""
        local = self.calls.get(call_id)
        if local is not None:
            return local.active.record.project_id == principal.project.id
        record = await self.db.call_session(call_id)
        return (record is not None and record.status == "active"
                and record.project_id == principal.project.id)

    async def hangup(self, call_id: str, principal: Principal) -> bool:
        """End a SIP call for a customer: ``POST …/hangup`` to OpenAI; when
        this process meters the call, it is recorded ``closed_by: "client"``
        (code 1000, ``hangup``) and its record awaited (at most 5 s). False
        (nothing done) when ``call_id`` is no active SIP call of the
        principal's project: the caller then tries its other kinds of calls.

        Raises:
            UpstreamError: OpenAI unreachable or answering 5xx; NotFound: it
                no longer knows the call (404).
        """
        if not await self._own_call(call_id, principal):
            return False
        local = self.calls.get(call_id)
        if local is not None:
            local.hanging_up = True  # the sideband's close now is the customer's hang-up
        try:
            status, text = await self.control(call_id, "hangup")
            _raise_for(status, text, call_id, "hangup")
        except BaseException:
            if local is not None:
                local.hanging_up = False
            raise
        if local is not None:
            local.active.meter.closed(CLIENT, 1000, HANGUP_REASON, monotonic_ms())
            await local.wait(_HANGUP_WAIT_S)
        return True

    async def refer(self, call_id: str, principal: Principal, target_uri: str) -> bool:
        """Transfer a SIP call: ``POST …/refer`` with ``target_uri``. False
        when ``call_id`` is no active SIP call of the principal's project.

        Raises:
            UpstreamError, NotFound, InvalidRequest: as OpenAI answered.
        """
        if not await self._own_call(call_id, principal):
            return False
        status, text = await self.control(call_id, "refer", {"target_uri": target_uri})
        _raise_for(status, text, call_id, "refer")
        return True

    # -- incoming calls --------------------------------------------------

    async def incoming(self, webhook_id: str, call: IncomingCall,
                       received_ms: float) -> dict[str, Any]:
        """Decide an incoming call (steps 4–6 of the module docstring);
        returns the webhook's JSON answer. The delivery was claimed.

        Raises:
            UpstreamError: the accept did not reach OpenAI or it answered
                5xx (the session finished, not billable).
        """
        gw = self.gateway
        route = route_call(self.settings.routes, call.sip_headers)
        if route is None:
            log.warning("SIP call %s: no route matches its headers; rejected %d",
                        call.call_id, SIP_NOT_FOUND)
            return await self._rejected(webhook_id, call.call_id, SIP_NOT_FOUND, "no route")
        try:
            principal = await project_principal(gw, route.project_id)
            if principal is None:
                log.warning("SIP call %s: route to unknown project %s; rejected %d",
                            call.call_id, route.project_id, SIP_NOT_FOUND)
                return await self._rejected(webhook_id, call.call_id, SIP_NOT_FOUND,
                                            "unknown project")
            upstream = gw.settings.upstream
            model = session_model(principal, route.model or None, upstream.default_model,
                                  upstream.allowed_models)
            active = await gw.admit(principal, TRANSPORT, model)
        except VoxgateError as err:
            code = reject_status(err)
            log.info("SIP call %s refused (%s: %s); rejected %d", call.call_id, err.code,
                     err.message, code)
            return await self._rejected(webhook_id, call.call_id, code,
                                        err.code or type(err).__name__)
        active.meter.accepted(received_ms)
        active.record.call_sid = call.call_id
        sip_call = SipCall(self, active, call.call_id, received_ms)
        try:
            await self.db.set_call(active.record.id, call.call_id)
            status, text = await self.control(call.call_id, "accept",
                                              accept_body(route.session, model))
        except BaseException as exc:
            detail = f"{type(exc).__name__}: {exc}"
            active.meter.upstream_connect_failed(monotonic_ms(), f"accept: {detail}")
            await sip_call.end(SERVER, None, "accept failed")
            raise
        if status >= 300:
            detail = f"accept answered HTTP {status}: {text}"
            now = monotonic_ms()
            if status >= 500:
                active.meter.upstream_connect_failed(now, detail)
            else:
                active.meter.upstream_refused(now, detail)
            await sip_call.end(SERVER, None, f"accept refused (HTTP {status})")
            if status >= 500:
                raise UpstreamError(f"the provider answered the accept with HTTP {status}")
            log.warning("SIP call %s: %s", call.call_id, detail)
            await self.db.delivery_done(webhook_id, f"accept_failed:{status}", active.record.id)
            return {"status": "accept_failed", "http_status": status,
                    "session_id": active.record.id}
        await self.db.delivery_done(webhook_id, "accepted", active.record.id)
        self.calls[call.call_id] = sip_call
        task = asyncio.create_task(sip_call.run(), name=f"sip-call {call.call_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info("SIP call %s accepted for project %s (session %s, model %s)", call.call_id,
                 principal.project.id, active.record.id, model)
        return {"status": "accepted", "session_id": active.record.id}

    async def _rejected(self, webhook_id: str, call_id: str, code: int,
                        why: str) -> dict[str, Any]:
        await self.reject(call_id, code)
        await self.db.delivery_done(webhook_id, f"rejected:{code}")
        return {"status": "rejected", "sip_status": code, "reason": why}


class SipCall:
    """One accepted SIP call, metered from its sideband until it closes.

    ``active.close`` (shutdown, fencing) hangs the call up at OpenAI and
    closes the sideband; ``active.transport_open`` is the sideband's state.
    """

    def __init__(self, calls: SipCalls, active: ActiveSession, call_id: str,
                 received_ms: float) -> None:
        self.calls = calls
        self.active = active
        self.call_id = call_id
        self.received_ms = received_ms  # the delivery received, monotonic ms
        self.audio = ReportedAudio()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._delta_audio = False  # the provider sent output audio deltas itself
        self._done = asyncio.Event()
        self.hanging_up = False  # a customer's hang-up is on its way to OpenAI
        active.close = self._close
        active.transport_open = self._transport_open

    @property
    def meter(self) -> SessionMeter:
        return self.active.meter

    def _transport_open(self) -> bool:
        """The gateway's watchdog: open while the accept and the sideband's
        connect are under way, then while the sideband is open."""
        if self.ws is None:
            return not self._done.is_set()
        return not self.ws.closed

    async def wait(self, timeout_s: float) -> None:
        """Until the call's session is recorded (at most ``timeout_s`` s)."""
        try:
            await asyncio.wait_for(self._done.wait(), timeout_s)
        except TimeoutError:
            log.warning("SIP call %s: not recorded %.0f s after its hang-up", self.call_id,
                        timeout_s)

    async def run(self) -> None:
        """Open the sideband, meter every event until it closes, finish."""
        gw = self.calls.gateway
        try:
            try:
                self.ws = await self.calls.open_sideband(self.call_id)
            except UpstreamError as exc:
                self.meter.upstream_connect_failed(monotonic_ms(), exc.message)
                log.warning("SIP call %s: %s; hanging up", self.call_id, exc.message)
                await self._hangup_quietly()
                self.meter.closed(SERVER, None, "sideband unavailable", monotonic_ms())
                return
            await self._read(gw, self.ws)
        finally:
            await self.end(SERVER, None, "call ended")

    async def _read(self, gw: Gateway, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Meter the sideband's events until it ends; record its close."""
        while True:
            msg = await ws.receive()
            now = monotonic_ms()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED,
                            WSMsgType.ERROR):
                break
            if time.monotonic() >= self.active.valid_until:
                await gw.fence(self.active)  # hangs the call up (``_close``)
                return
            if msg.type is WSMsgType.TEXT:
                self._event(msg.data, now)
            elif msg.type is WSMsgType.BINARY:
                self.meter.record(classify(UPSTREAM, "binary", len(msg.data)), now)
        code, reason = upstream_end(ws, msg)
        now = monotonic_ms()
        self._add(self.audio.end(now))
        if self.hanging_up:  # OpenAI ended the call on the customer's hang-up
            self.meter.closed(CLIENT, 1000, HANGUP_REASON, now)
        self.meter.closed(UPSTREAM, code, reason or "sideband closed", now)

    def _event(self, text: str, now: float) -> None:
        """Meter one sideband event (and the audio it reports)."""
        nbytes = len(text.encode())
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError:
            event = None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            self.meter.record(classify(UPSTREAM, "unknown", nbytes), now)
            return
        etype = event["type"]
        ev = classify(UPSTREAM, etype, nbytes, event)
        self.meter.record(ev, now)
        # the sideband of an already established call need not begin with
        # session.created: its first event then marks the call connected
        self.meter.joined(now)
        if etype in OUTPUT_AUDIO_EVENTS and ev.audio_bytes:
            self._delta_audio = True  # metered from the bytes; tokens no longer added
        elif etype == "input_audio_buffer.speech_started":
            self._add(self.audio.speech_started(event.get("audio_start_ms"), now))
        elif etype == "input_audio_buffer.speech_stopped":
            self._add(self.audio.speech_stopped(event.get("audio_end_ms")))
        elif etype == "response.done" and ev.usage is not None and not self._delta_audio:
            self._add(self.audio.response_done(ev.usage.output_audio_tokens))

    def _add(self, audio_ms: tuple[float, float]) -> None:
        """Add reported audio (ms in, ms out) to the session's measurements.
        The meter counts audio from the bytes it is fed; a SIP call's audio
        never passes through voxgate, so its figures are added here."""
        in_ms, out_ms = audio_ms
        if in_ms or out_ms:
            self.meter.reported_audio(in_ms, out_ms)

    async def _close(self, code: int, reason: str) -> None:
        """``ActiveSession.close``: hang the call up at OpenAI, close the sideband."""
        await self._hangup_quietly()
        if self.ws is not None and not self.ws.closed:
            await self.ws.close(code=1000, message=reason.encode()[:120])

    async def _hangup_quietly(self) -> None:
        try:
            status, text = await self.calls.control(self.call_id, "hangup")
            if status >= 300 and status != 404:
                log.warning("SIP call %s: hangup answered HTTP %d: %s", self.call_id, status,
                            text)
        except UpstreamError as exc:
            log.warning("SIP call %s: hangup not delivered: %s", self.call_id, exc.message)

    async def end(self, by: str, code: int | None, reason: str) -> None:
        """Record the close (the first one counts), finish the session
        (verdict, lease), forget the call. Idempotent."""
        self.meter.closed(by, code, reason, monotonic_ms())
        try:
            await self.calls.gateway.finish(self.active)
        finally:
            if self.calls.calls.get(self.call_id) is self:
                del self.calls.calls[self.call_id]
            if self.ws is not None and not self.ws.closed:
                await self.ws.close()
            self._done.set()


def _raise_for(status: int, text: str, call_id: str, action: str) -> None:
    """Translate OpenAI's answer to a customer's call control."""
    if status < 300:
        return
    if status == 404:
        raise NotFound(f"the provider no longer knows call {call_id!r}", param="call_id")
    if status < 500:
        raise InvalidRequest(f"the provider refused the {action} (HTTP {status}): {text[:200]}")
    raise UpstreamError(f"the provider answered the {action} with HTTP {status}")


# -- handlers --------------------------------------------------------------------

SIP_CALLS = web.AppKey("sip_calls", SipCalls)


async def webhook(request: web.Request) -> web.Response:
    """``POST /v1/telephony/openai/webhook``: one OpenAI webhook delivery.

    Answers 200 ``{"status": "accepted" | "rejected" | "duplicate" |
    "ignored" | "accept_failed", …}`` once the call is decided.

    Raises (rendered as JSON):
        WebhookSignatureError (400), InvalidRequest (400: not a JSON
        event, no ``call_id``), MessageTooLarge (413: over ``MAX_WEBHOOK_BYTES``);
        ServiceUnavailable (503: no webhook secret configured, the
        database down); UpstreamError (502: the accept did not reach
        OpenAI; the delivery is forgotten so that its retry is handled).
    """
    received_ms = monotonic_ms()
    calls: SipCalls = request.app[SIP_CALLS]
    secret = calls.settings.openai_webhook_secret
    if secret is None or not secret.get_secret_value():
        raise ServiceUnavailable("SIP calls are not configured: set [sip] openai_webhook_secret")
    if request.content_length is not None and request.content_length > MAX_WEBHOOK_BYTES:
        raise MessageTooLarge(f"webhook body over {MAX_WEBHOOK_BYTES} bytes")
    body = await request.read()
    if len(body) > MAX_WEBHOOK_BYTES:
        raise MessageTooLarge(f"webhook body over {MAX_WEBHOOK_BYTES} bytes")
    now = time.time()
    webhook_id = verify_signature(secret.get_secret_value(), request.headers, body, now,
                                  calls.settings.tolerance_s)
    parsed = parse_incoming(body)
    if not isinstance(parsed, IncomingCall):
        return json_response({"status": "ignored", "type": parsed})
    if not await calls.db.claim_delivery(webhook_id, parsed.call_id, now, DELIVERY_KEEP_S):
        log.info("SIP webhook %s (call %s) delivered again: ignored", webhook_id,
                 parsed.call_id)
        return json_response({"status": "duplicate"})
    try:
        answer = await calls.incoming(webhook_id, parsed, received_ms)
    except BaseException:
        try:
            await asyncio.shield(calls.db.release_delivery(webhook_id))
        except Exception:  # noqa: BLE001 - the delivery then stays taken
            log.exception("SIP webhook %s: releasing the delivery", webhook_id)
        raise
    return json_response(answer)


async def refer_call(request: web.Request) -> web.Response:
    """``POST /v1/realtime/calls/{call_id}/refer`` ``{"target_uri"}``:
    transfer a SIP call (a project API key of its project). 200 ``{}``.

    Raises:
        AuthenticationError, PermissionDenied (401/403); InvalidRequest
        (400: ``target_uri`` missing or not ``tel:``/``sip:``); NotFound
        (404: no active SIP call of the project); UpstreamError (502).
    """
    calls: SipCalls = request.app[SIP_CALLS]
    principal = await authenticate(request, calls.gateway.store, allow_ephemeral=False)
    call_id = request.match_info["call_id"]
    body = await read_json(request)
    target = body.get("target_uri") if isinstance(body, dict) else None
    if not valid_target_uri(target):
        raise InvalidRequest("target_uri must be a tel: or sip: URI", param="target_uri")
    assert isinstance(target, str)
    if not await calls.refer(call_id, principal, target):
        raise NotFound(f"no active SIP call {call_id!r}", param="call_id")
    return json_response({})


async def hangup_call(request: web.Request) -> web.Response:
    """``POST /v1/realtime/calls/{call_id}/hangup`` for SIP calls only (an
    app without WebRTC calls; otherwise the WebRTC handler hands SIP call
    ids to ``SipCalls.hangup``). 200 once OpenAI took the hang-up.

    Raises:
        AuthenticationError, PermissionDenied; NotFound (404); UpstreamError.
    """
    calls: SipCalls = request.app[SIP_CALLS]
    principal = await authenticate(request, calls.gateway.store, allow_ephemeral=True)
    call_id = request.match_info["call_id"]
    if not await calls.hangup(call_id, principal):
        raise NotFound(f"no active call {call_id!r}", param="call_id")
    return web.Response(status=200)


def routes() -> list[web.RouteDef]:
    """The webhook and ``refer`` routes (``hangup``: see ``setup``)."""
    return [web.post(WEBHOOK_PATH, webhook), web.post(REFER_PATH, refer_call)]


def _served(app: web.Application, method: str, path: str) -> bool:
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        if route.method == method and (info.get("formatter") or info.get("path")) == path:
            return True
    return False


def setup(app: web.Application) -> None:
    """Add the SIP routes and ``SIP_CALLS`` (``[sip]`` of the app's
    settings). Install after ``voxgate.proxy.webrtc``: when its hangup
    route is there, SIP hang-ups go through it (it calls
    ``SipCalls.hangup``); else this module serves the path itself."""
    settings = app[SETTINGS]
    calls = SipCalls(app, getattr(settings, "sip", None) or SipSettings())
    app[SIP_CALLS] = calls
    app.router.add_routes(routes())
    if not _served(app, "POST", HANGUP_PATH):
        app.router.add_post(HANGUP_PATH, hangup_call)

    async def close(_app: web.Application) -> None:
        await calls.close()

    app.on_cleanup.append(close)

