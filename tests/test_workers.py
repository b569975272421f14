"""Several voxgate processes on one database and one Redis (a redis-server
of the test's own): `voxgate serve --workers 2` on one port, and two
`voxgate serve` processes on two ports, where a WebRTC call made through one
is inspected, sideband-attached and hung up through the other
(``voxgate.proxy.cluster``)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ROOT, SLOW, free_port
from tests.served import new_key, records, redis_server, serve, settings_env  # noqa: F401
from tests.webrtc.client import Client


def test_workers_without_shared_admission_are_refused(tmp_path, voice_url, catalog_path):
    env = settings_env(tmp_path / "data", voice_url, catalog_path)
    result = subprocess.run([sys.executable, "-m", "voxgate", "serve", "--workers", "2",
                             "--port", str(free_port())], cwd=str(ROOT), env=env,
                            capture_output=True, text=True, timeout=60 * SLOW)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "admission_url" in lines[0] and "redis://" in lines[0], lines
    assert not (tmp_path / "data").exists()  # nothing created


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a socket listening on TCP ``port``
    (its fds' socket inodes against /proc/net/tcp's LISTEN rows)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = row.split()
        if int(cols[1].split(":")[1], 16) == port and cols[3] == "0A" and cols[9] in inodes:
            return True
    return False


async def _call(http: aiohttp.ClientSession, url: str, key: str) -> Client:
    call = Client(url, b"", then_silence=True)
    await call.connect(http, key)
    await asyncio.wait_for(call.opened.wait(), 20 * SLOW)
    await call.wait_event("session.created")
    return call


async def test_two_workers_on_one_port_serve_and_stop_cleanly(
        tmp_path, voice_url, catalog_path, redis_server):  # noqa: F811
    env = settings_env(tmp_path / "data", voice_url, catalog_path,
                       admission_url=redis_server.url, drain_timeout_s="1")
    _, _, key = await new_key(env, "roomy")
    served = serve(env, tmp_path / "serve.log", "--workers", "2")
    try:
        assert served.lines[-1].strip().endswith("(2 workers)")
        pid = served.proc.pid
        workers = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        assert len(workers) == 2, workers
        async with aiohttp.ClientSession() as http:
            # whichever worker each request reaches, every call is hung up and recorded
            calls = [await _call(http, served.url, key) for _ in range(3)]
            for call in calls:
                async with http.post(served.url + f"/v1/realtime/calls/{call.call_id}/hangup",
                                     headers={"Authorization": f"Bearer {key}"}) as resp:
                    assert resp.status == 200, await resp.text()
                async with http.get(served.url + f"/v1/realtime/calls/{call.call_id}",
                                    headers={"Authorization": f"Bearer {key}"}) as resp:
                    assert (await resp.json())["status"] == "completed"
                await call.close()
        # a worker killed -9 is restarted; the group still serves and stops cleanly
        os.kill(int(workers[0]), signal.SIGKILL)
        for _ in range(int(600 * SLOW)):
            now = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if len(now) == 2 and workers[0] not in now:
                break
            await asyncio.sleep(0.1)
        assert len(now) == 2 and workers[0] not in now, (workers, now)
        assert "restarting it" in served.stderr()
        (new,) = set(now) - set(workers)
        port = int(served.url.rsplit(":", 1)[1])
        for _ in range(int(600 * SLOW)):  # the replacement listens on the shared port
            if _listens(int(new), port):
                break
            await asyncio.sleep(0.1)
        assert _listens(int(new), port)
        served.terminate()
        assert await asyncio.to_thread(served.wait, 90) == 0, served.stderr()[-3000:]
        for record in await records(env, *[c.session_id for c in calls]):
            assert record.status == "completed"
            assert (record.measurements.closed_by, record.measurements.close_reason) == (
                "client", "hangup")
    finally:
        served.stop()


async def test_call_control_through_another_process(
        tmp_path, voice_url, catalog_path, redis_server):  # noqa: F811
    env = settings_env(tmp_path / "data", voice_url, catalog_path,
                       admission_url=redis_server.url)
    _, _, key = await new_key(env, "roomy")
    _, _, stranger = await new_key(env, "roomy")
    a = serve(env, tmp_path / "a.log")
    b = serve(env, tmp_path / "b.log")
    auth = {"Authorization": f"Bearer {key}"}
    try:
        async with aiohttp.ClientSession() as http:
            call = await _call(http, a.url, key)
            path = f"/v1/realtime/calls/{call.call_id}"

            async with http.get(b.url + path, headers=auth) as resp:  # the shared database
                body = await resp.json()
                assert resp.status == 200, body
                assert body["call_id"] == call.call_id and body["status"] == "active"

            # sideband attached through B: a response it asks for comes back to it
            async with http.ws_connect(b.ws_url + f"?call_id={call.call_id}",
                                       headers=auth) as sideband:
                assert sideband._response.headers["X-Voxgate-Session-Id"] == call.session_id
                await sideband.send_json({"type": "conversation.item.create", "item": {
                    "type": "message", "role": "user",
                    "content": [{"type": "input_text", "text": "Say hello."}]}})
                await sideband.send_json({"type": "response.create"})
                await sideband.send_str("not json")
                seen = []
                async with asyncio.timeout(30 * SLOW):
                    while "response.done" not in seen:
                        seen.append((await sideband.receive_json())["type"])
                assert "error" in seen  # its own bad event answered to it
                await call.wait_event("response.done")  # the browser sees the same response

            # the wrong project, an unknown call: refused as for a local call
            with pytest.raises(aiohttp.WSServerHandshakeError) as forbidden:
                await http.ws_connect(b.ws_url + f"?call_id={call.call_id}",
                                      headers={"Authorization": f"Bearer {stranger}"})
            assert forbidden.value.status == 403
            async with http.post(b.url + path + "/hangup",
                                 headers={"Authorization": f"Bearer {stranger}"}) as resp:
                assert resp.status == 404
            started = time.monotonic()
            async with http.post(b.url + "/v1/realtime/calls/rtc_0123456789abcdef/hangup",
                                 headers=auth) as resp:
                assert resp.status == 404
                assert (await resp.json())["error"]["code"] == "not_found"
            assert time.monotonic() - started < 2 * SLOW  # every process said no: no timeout

            # hung up through B: ended on A (a sideband attached through B closes),
            # recorded, readable through either
            watcher = await http.ws_connect(b.ws_url + f"?call_id={call.call_id}", headers=auth)
            async with http.post(b.url + path + "/hangup", headers=auth) as resp:
                assert resp.status == 200, await resp.text()
            await asyncio.wait_for(call.closed.wait(), 10 * SLOW)
            async with asyncio.timeout(10 * SLOW):
                while (msg := await watcher.receive()).type is aiohttp.WSMsgType.TEXT:
                    pass
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert (msg.data, msg.extra) == (1000, "call ended: hangup"), msg
            await watcher.close()
            for served in (a, b):
                async with http.get(served.url + path, headers=auth) as resp:
                    body = await resp.json()
                    assert body["status"] == "completed", body
            await call.close()
        (record,) = await records(env, call.session_id)
        m = record.measurements
        assert (m.closed_by, m.close_reason) == ("client", "hangup")
        assert m.responses_completed == 1
    finally:
        a.stop()
        b.stop()
