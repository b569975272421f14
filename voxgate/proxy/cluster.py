"""Call control across voxgate processes, through Redis pub/sub.

A WebRTC call lives in the process that answered its offer (its peer
connection, its upstream socket). With several workers or hosts a hang-up
(``POST /v1/realtime/calls/{id}/hangup``, ``DELETE …``) or a sideband attach
(``GET /v1/realtime?call_id=…``) may reach another process; that process asks
the cluster, and the one holding the call answers. ``GET
/v1/realtime/calls/{id}`` needs none of this: it reads the shared database.

Channels (``prefix`` as admission's, ``voxgate:``):

- ``{prefix}calls`` — every process subscribes; requests go here:
  ``{"op": "hangup" | "attach", "req", "from", "call_id", "project_id"[, "link"]}``.
- ``{prefix}instance:{instance_id}`` — one per process; replies
  ``{"op": "reply", "re", "from", "status"[, "session_id"]}`` (status
  ``absent``, ``forbidden``, ``done``, ``attached``) and sideband traffic
  ``{"op": "link", "link", "data"}`` / ``{"op": "link_close", "link", "code",
  "reason"}``.

Every process answers every request (``absent`` when the call is not its
own), so a request knows from ``PUBLISH``'s receiver count when all have
answered: an unknown call is a 404 at once, not after a timeout. Pub/sub
delivers in order per connection and each side sends sequentially, so a
sideband's events keep their order (https://redis.io/docs/latest/develop/interact/pubsub/).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from aiohttp import WSMessage, WSMsgType, web
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from voxgate.errors import NotFound, PermissionDenied, ServiceUnavailable

__all__ = ["Cluster", "RemoteLink", "RemoteSocket", "ROUTE_TIMEOUT_S", "ROUTING_CONNECTIONS"]

log = logging.getLogger("voxgate.cluster")

ROUTE_TIMEOUT_S = 10.0  # a hang-up waits for the call's record; longer means a process is gone
ROUTING_CONNECTIONS = 8  # Redis connections for routing: the subscription and the publishes
_RECONNECT_S = 1.0


class Cluster:
    """This process's end of the call routing.

    Args:
        url: Redis URL (``admission_url``).
        instance_id: this process (``Gateway.instance_id``).
        find_call: the local ``Call`` of a call id, or None (``app[CALLS].get``).
        prefix: channel prefix.
    """

    def __init__(self, url: str, instance_id: str, find_call: Callable[[str], Any], *,
                 prefix: str = "voxgate:") -> None:
        self.redis = Redis(connection_pool=BlockingConnectionPool.from_url(
            url, decode_responses=True, max_connections=ROUTING_CONNECTIONS, timeout=5.0,
            socket_connect_timeout=5.0))
        self.instance_id = instance_id
        self.find_call = find_call
        self.broadcast = f"{prefix}calls"
        self.prefix = prefix
        self.own = self._channel(instance_id)
        self._replies: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._links: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._listener: asyncio.Task | None = None
        self._subscribed = asyncio.Event()

    def _channel(self, instance_id: str) -> str:
        return f"{self.prefix}instance:{instance_id}"

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Subscribe (in the background; retried while Redis is away)."""
        self._listener = asyncio.create_task(self._listen(), name="cluster listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), 5.0)

    async def close(self) -> None:
        for task in [self._listener, *self._tasks]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*[t for t in [self._listener, *self._tasks] if t is not None],
                             return_exceptions=True)
        await self.redis.aclose(close_connection_pool=True)

    async def _listen(self) -> None:
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.broadcast, self.own)
                self._subscribed.set()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._dispatch(orjson.loads(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: subscribe again
                log.warning("call routing unsubscribed (%s: %s); retrying", type(exc).__name__, exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(_RECONNECT_S)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "reply":
            queue = self._replies.get(msg.get("re", ""))
            if queue is not None:
                queue.put_nowait(msg)
        elif op in ("link", "link_close"):
            queue = self._links.get(msg.get("link", ""))
            if queue is not None:
                queue.put_nowait(msg)
        elif op in ("hangup", "attach") and msg.get("from") != self.instance_id:
            self._spawn(self._serve(msg))

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, channel: str, msg: dict[str, Any]) -> int:
        """Publish ``msg``; the number of subscribers that got it.

        Raises:
            ServiceUnavailable: Redis is unreachable or too slow (translated
                here, chained from redis-py's error).
        """
        try:
            return int(await self.redis.publish(channel, orjson.dumps(msg)))
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise ServiceUnavailable("Redis is unavailable; retry shortly") from exc

    # -- the process holding the call ---------------------------------------

    async def _serve(self, msg: dict[str, Any]) -> None:
        """Answer a request: ``absent`` unless the call is live here."""
        reply: dict[str, Any] = {"op": "reply", "re": msg["req"], "from": self.instance_id}
        call = self.find_call(msg.get("call_id", ""))
        if call is None or call.done:
            reply["status"] = "absent"
        elif call.active.record.project_id != msg.get("project_id"):
            reply["status"] = "forbidden"
        elif msg["op"] == "hangup":
            await call.hangup()
            reply["status"] = "done"
        else:
            remote = RemoteSocket(self, self._channel(msg["from"]), msg["link"])
            reply.update(status="attached", session_id=call.active.record.id)
            await self._publish(self._channel(msg["from"]), reply)
            try:
                await call.attach(remote)  # duck-typed as the WebSocket it stands for
            finally:
                await remote.close(code=1000, message=b"sideband detached")
            return
        await self._publish(self._channel(msg["from"]), reply)

    # -- the process the request reached ---------------------------------------

    async def _ask(self, op: str, call_id: str, project_id: str, **extra: Any) -> dict[str, Any]:
        """Publish a request and wait for the process holding the call;
        ``{"status": "absent"}`` when every process says it is not theirs."""
        req = uuid.uuid4().hex
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._replies[req] = queue
        try:
            receivers = await self._publish(self.broadcast, {
                "op": op, "req": req, "from": self.instance_id, "call_id": call_id,
                "project_id": project_id, **extra})
            others = receivers - 1  # this process hears its own request and ignores it
            async with asyncio.timeout(ROUTE_TIMEOUT_S):
                for _ in range(max(0, others)):
                    reply = await queue.get()
                    if reply.get("status") != "absent":
                        return reply
        except TimeoutError:
            raise ServiceUnavailable("the process holding this call did not answer") from None
        finally:
            self._replies.pop(req, None)
        return {"status": "absent"}

    @staticmethod
    def _check(reply: dict[str, Any], call_id: str) -> None:
        if reply["status"] == "absent":
            raise NotFound(f"no active call {call_id!r}", param="call_id")
        if reply["status"] == "forbidden":
            raise PermissionDenied(f"call {call_id!r} belongs to another project", param="call_id")

    async def hangup(self, call_id: str, project_id: str) -> None:
        """Hang up a call held by another process; returns once it is recorded.

        Raises:
            NotFound (no process holds it, or it belongs to another project:
            as for a local call), ServiceUnavailable (no answer within
            ``ROUTE_TIMEOUT_S``), Redis errors (503 at the edge).
        """
        reply = await self._ask("hangup", call_id, project_id)
        if reply["status"] != "done":
            raise NotFound(f"no active call {call_id!r}", param="call_id")

    async def attach(self, call_id: str, project_id: str) -> RemoteLink:
        """Open a sideband link to a call held by another process; run it
        with ``RemoteLink.run(ws)`` once the client's socket is prepared.

        Raises:
            NotFound (404), PermissionDenied (403), ServiceUnavailable (503).
        """
        link = uuid.uuid4().hex
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._links[link] = queue  # before asking: the owner's first events may come at once
        try:
            reply = await self._ask("attach", call_id, project_id, link=link)
            self._check(reply, call_id)
        except BaseException:
            self._links.pop(link, None)
            raise
        return RemoteLink(self, link, queue, self._channel(reply["from"]), reply["session_id"])


class RemoteLink:
    """The client-facing end of a sideband attached through another process:
    the client's events go to the process holding the call, its server
    events come back. ``session_id`` names the call's session."""

    def __init__(self, cluster: Cluster, link: str, queue: asyncio.Queue[dict[str, Any]],
                 peer: str, session_id: str) -> None:
        self.cluster, self.link, self.queue, self.peer = cluster, link, queue, peer
        self.session_id = session_id

    async def run(self, ws: web.WebSocketResponse) -> None:
        """Relay until either side closes (the call ending closes the client
        with the code and reason the owner gives)."""
        down = asyncio.create_task(self._down(ws))
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await self.cluster._publish(self.peer, {"op": "link", "link": self.link,
                                                            "data": msg.data})
                elif msg.type is WSMsgType.BINARY:
                    await self.cluster._publish(self.peer, {"op": "link", "link": self.link,
                                                            "binary": len(msg.data)})
                else:
                    break
        finally:
            down.cancel()
            self.cluster._links.pop(self.link, None)
            with contextlib.suppress(Exception):
                await self.cluster._publish(self.peer, {"op": "link_close", "link": self.link,
                                                        "code": 1000, "reason": "client closed"})

    async def _down(self, ws: web.WebSocketResponse) -> None:
        while True:
            msg = await self.queue.get()
            if msg["op"] == "link_close":
                await ws.close(code=int(msg.get("code") or 1000),
                               message=str(msg.get("reason") or "").encode()[:120])
                return
            await ws.send_str(msg["data"])


class RemoteSocket:
    """The call-side end of a remote sideband: what ``Call.attach`` reads
    and writes as if it were the client's WebSocket (``async for``,
    ``send_str``, ``closed``, ``close``)."""

    def __init__(self, cluster: Cluster, peer: str, link: str) -> None:
        self.cluster, self.peer, self.link = cluster, peer, link
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        cluster._links[link] = self.queue
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[WSMessage]:
        while not self.closed:
            msg = await self.queue.get()
            if msg["op"] == "link_close":
                self.closed = True
                yield WSMessage(WSMsgType.CLOSE, msg.get("code"), msg.get("reason"))
                return
            if "binary" in msg:
                yield WSMessage(WSMsgType.BINARY, bytes(int(msg["binary"])), None)
            else:
                yield WSMessage(WSMsgType.TEXT, msg["data"], None)

    async def send_str(self, data: str) -> None:
        if not self.closed:
            await self.cluster._publish(self.peer, {"op": "link", "link": self.link, "data": data})

    async def close(self, *, code: int = 1000, message: bytes = b"") -> None:
        if self.closed:
            return
        self.closed = True
        self.cluster._links.pop(self.link, None)
        self.queue.put_nowait({"op": "link_close"})  # ends the reader
        with contextlib.suppress(Exception):
            await self.cluster._publish(self.peer, {"op": "link_close", "link": self.link,
                                                    "code": code,
                                                    "reason": message.decode(errors="replace")})
