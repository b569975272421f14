"""A small fake of OpenAI's SIP call control on loopback, written from the
"Realtime API with SIP" guide and the API reference: the REST endpoints
``POST /v1/realtime/calls/{call_id}/accept|reject|refer|hangup`` (Bearer
key; 200 with an empty body), the sideband WebSocket
``GET /v1/realtime?call_id=…`` of an accepted call (server events only:
the call's audio flows on SIP), and a plain realtime WebSocket
(``?model=…``: ``session.created``, then nothing) for the other sessions
a test opens through voxgate. Also signs webhook deliveries as OpenAI does
(Standard Webhooks)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from tests.conftest import free_port

SECRET = "whsec_" + base64.b64encode(b"voxgate-sip-test-secret-0123456789").decode()
OPERATOR_KEY = "sk-operator-test"


def signed_headers(body: bytes, *, secret: str = SECRET, webhook_id: str | None = None,
                   timestamp: int | None = None) -> dict[str, str]:
    """The headers of an OpenAI webhook delivery of ``body`` (Standard
    Webhooks: HMAC-SHA256 of ``id.timestamp.body`` with the secret's
    base64-decoded bytes, ``v1,<base64>``)."""
    webhook_id = webhook_id or f"wh_{time.monotonic_ns():x}"
    ts = str(int(time.time()) if timestamp is None else timestamp)
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{webhook_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return {"webhook-id": webhook_id, "webhook-timestamp": ts,
            "webhook-signature": "v1," + base64.b64encode(mac).decode(),
            "content-type": "application/json", "user-agent": "OpenAI/1.0"}


def incoming_call(call_id: str, to: str = "sip:+18005551212@sip.example.com",
                  extra: list[dict[str, str]] | None = None) -> bytes:
    """A ``realtime.call.incoming`` event body (the guide's example shape)."""
    return orjson.dumps({
        "object": "event", "id": f"evt_{call_id}", "type": "realtime.call.incoming",
        "created_at": int(time.time()),
        "data": {"call_id": call_id, "sip_headers": [
            {"name": "From", "value": "sip:+14155550100@sip.example.com"},
            {"name": "To", "value": to},
            {"name": "Call-ID", "value": f"{call_id}@sip.example.com"},
            *(extra or [])]},
    })


@dataclass
class Control:
    """One call-control request the fake received."""

    call_id: str
    action: str
    body: dict[str, Any]
    authorization: str


@dataclass
class FakeOpenAISip:
    """The fake server. ``scripts[call_id]``: the events its sideband sends
    once opened (default: ``session.created`` only); ``end_after_script``:
    close the sideband (1000) after them, else it stays open until the
    call is hung up (``POST …/hangup`` or ``end``)."""

    url: str = ""  # ws://127.0.0.1:PORT/v1/realtime
    controls: list[Control] = field(default_factory=list)
    scripts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    end_after_script: set[str] = field(default_factory=set)
    status: dict[str, int] = field(default_factory=dict)  # action -> HTTP status to answer
    sidebands: dict[str, web.WebSocketResponse] = field(default_factory=dict)
    sideband_auth: dict[str, str] = field(default_factory=dict)
    sideband_opened: dict[str, asyncio.Event] = field(default_factory=dict)
    refuse_sideband: set[str] = field(default_factory=set)  # answered 404, no upgrade
    _ended: dict[str, asyncio.Event] = field(default_factory=dict)

    def of(self, action: str, call_id: str | None = None) -> list[Control]:
        return [c for c in self.controls
                if c.action == action and (call_id is None or c.call_id == call_id)]

    def opened(self, call_id: str) -> asyncio.Event:
        return self.sideband_opened.setdefault(call_id, asyncio.Event())

    def end(self, call_id: str) -> None:
        """The caller hangs up: the call's sideband closes (1000)."""
        self._ended.setdefault(call_id, asyncio.Event()).set()

    async def control(self, request: web.Request) -> web.Response:
        call_id, action = request.match_info["call_id"], request.match_info["action"]
        raw = await request.read()
        body = orjson.loads(raw) if raw.strip() else {}
        self.controls.append(Control(call_id, action, body,
                                     request.headers.get("Authorization", "")))
        status = self.status.get(action, 200)
        if status == 200 and action == "hangup":
            self.end(call_id)
        if status != 200:
            return web.json_response({"error": {"message": f"{action} failed",
                                                "type": "invalid_request_error"}},
                                     status=status)
        return web.Response(status=200)

    async def realtime(self, request: web.Request) -> web.StreamResponse:
        call_id = request.query.get("call_id")
        if call_id in self.refuse_sideband:
            return web.json_response({"error": {"message": "call not found"}}, status=404)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if call_id is None:  # an ordinary session: session.created, then wait
            await ws.send_str(orjson.dumps({"type": "session.created", "event_id": "ev_1",
                                            "session": {"type": "realtime"}}).decode())
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    break
            return ws
        self.sidebands[call_id] = ws
        self.sideband_auth[call_id] = request.headers.get("Authorization", "")
        self.opened(call_id).set()
        script = self.scripts.get(call_id, [{"type": "session.created",
                                             "session": {"type": "realtime"}}])
        for i, event in enumerate(script):
            await ws.send_str(orjson.dumps({"event_id": f"ev_{i}", **event}).decode())
        ended = self._ended.setdefault(call_id, asyncio.Event())
        if call_id in self.end_after_script:
            ended.set()
        reader = asyncio.ensure_future(ws.receive())
        waiter = asyncio.ensure_future(ended.wait())
        await asyncio.wait([reader, waiter], return_when=asyncio.FIRST_COMPLETED)
        reader.cancel()
        waiter.cancel()
        if not ws.closed:
            await ws.close(code=1000, message=b"call ended")
        return ws


async def start_fake() -> tuple[FakeOpenAISip, web.AppRunner]:
    fake = FakeOpenAISip()
    app = web.Application()
    app.router.add_post("/v1/realtime/calls/{call_id}/{action}", fake.control)
    app.router.add_get("/v1/realtime", fake.realtime)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    fake.url = f"ws://127.0.0.1:{port}/v1/realtime"
    return fake, runner
