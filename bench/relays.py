"""Bare WebSocket relays with no metering, for comparison with voxgate:
``python -m bench.relays aiohttp|websockets --port P --upstream ws://…/v1/realtime``.

Both relay ``/v1/realtime`` frames unchanged both ways (text as text), pass
the query string and ``Authorization`` on, and close the other side when
one side closes. No parsing, no checks, no metering.
"""

from __future__ import annotations

import argparse
import asyncio


async def aiohttp_relay(port: int, upstream: str) -> None:
    import aiohttp
    from aiohttp import WSMsgType, web

    http = aiohttp.ClientSession()

    async def handler(request: web.Request) -> web.StreamResponse:
        up = await http.ws_connect(upstream, params=request.query,
                                   headers={"Authorization": request.headers.get("Authorization", "")},
                                   max_msg_size=16 * 2**20, compress=0)
        client = web.WebSocketResponse(max_msg_size=16 * 2**20, compress=False)
        await client.prepare(request)

        async def pump(src, dst) -> None:
            async for msg in src:
                if msg.type is WSMsgType.TEXT:
                    await dst.send_str(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)
                else:
                    break
            await dst.close()

        await asyncio.gather(pump(client, up), pump(up, client), return_exceptions=True)
        return client

    app = web.Application()
    app.router.add_get("/v1/realtime", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


async def websockets_relay(port: int, upstream: str) -> None:
    import websockets
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve

    async def handler(client) -> None:
        path = client.request.path
        query = path.split("?", 1)[1] if "?" in path else ""
        url = upstream + ("?" + query if query else "")
        auth = client.request.headers.get("Authorization", "")
        async with connect(url, additional_headers={"Authorization": auth}, max_size=16 * 2**20,
                           compression=None) as up:
            async def pump(src, dst) -> None:
                try:
                    async for msg in src:
                        await dst.send(msg)
                except websockets.ConnectionClosed:
                    pass
                await dst.close()

            await asyncio.gather(pump(client, up), pump(up, client), return_exceptions=True)

    async with serve(handler, "127.0.0.1", port, max_size=16 * 2**20, compression=None):
        await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=("aiohttp", "websockets", "hello"))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", default="")
    args = p.parse_args()
    import uvloop

    if args.kind == "aiohttp":
        uvloop.run(aiohttp_relay(args.port, args.upstream))
    elif args.kind == "websockets":
        uvloop.run(websockets_relay(args.port, args.upstream))
    else:
        uvloop.run(hello(args.port))


async def hello(port: int) -> None:
    """An aiohttp hello world (the baseline of the token benchmark)."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"hello": "world"})

    app = web.Application()
    app.router.add_post("/hello", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    main()
