"""``voxgate call``: stream a recording through voxgate in real time with the
official ``openai`` SDK's realtime client (``base_url`` set to voxgate), and
report what the provider heard, its reply (text and a WAV) and voxgate's
record of the session.

The turn is committed explicitly (``turn_detection: null``, then
``input_audio_buffer.commit`` and ``response.create``) so that the whole
recording is one turn whatever its pauses; ``--vad`` uses server VAD instead.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiohttp

from voxgate.config import load_settings
from voxgate.proxy.keys import DEMO_KEY_FILE, default_key
from voxgate.proxy.ws_relay import SESSION_ID_HEADER

if TYPE_CHECKING:
    from openai.types.realtime import RealtimeAudioInputTurnDetectionParam

__all__ = ["run_call", "stream_call", "CallResult", "SAMPLE", "refusal_message"]

CHUNK_MS = 20
RATE: Final = 24000
BYTES_PER_MS = RATE * 2 // 1000
SAMPLE = resources.files("voxgate") / "data" / "speech" / "jfk.flac"
"""The speech streamed when no ``--audio`` is given (JFK, 11.0 s, public
domain; source in ``voxgate/data/speech/README.md``)."""


class CallResult(dict):
    """``{"heard", "reply", "reply_audio", "reply_audio_ms", "session_id", "events"}``"""


async def stream_call(
    base_url: str,
    key: str,
    pcm: bytes,
    *,
    model: str = "gpt-realtime",
    speed: float = 1.0,
    timeout_s: float = 60.0,
    vad: bool = False,
    extra_query: dict[str, str] | None = None,
) -> CallResult:
    """Stream 24 kHz PCM16 mono ``pcm`` through voxgate and collect the reply.

    Args:
        base_url: voxgate's HTTP base URL (``http://127.0.0.1:8080``).
        speed: 1.0 = real time; larger streams faster.
    Raises:
        openai.OpenAIError / websockets errors when the session cannot open.
        TimeoutError: no ``response.done`` within ``timeout_s``.
    """
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key=key, base_url=base_url.rstrip("/") + "/v1", max_retries=0)
    heard: list[str] = []
    reply_parts: list[str] = []
    audio = bytearray()
    counts: dict[str, int] = {}
    async with client.realtime.connect(model=model, extra_query=extra_query or {}) as conn:
        session_id = _session_id(conn)
        turn_detection: RealtimeAudioInputTurnDetectionParam | None = (
            {"type": "server_vad", "silence_duration_ms": 800} if vad else None)
        await conn.session.update(session={
            "type": "realtime",
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": RATE},
                    "transcription": {"model": "whisper-1"},
                    "turn_detection": turn_detection,
                },
                "output": {"format": {"type": "audio/pcm", "rate": RATE}, "voice": "alloy"},
            },
        })

        async def send() -> None:
            step = CHUNK_MS * BYTES_PER_MS
            t0 = time.monotonic()
            silence = bytes(BYTES_PER_MS * 1000) if vad else b""
            data = pcm + silence
            for i in range(0, len(data), step):
                await conn.input_audio_buffer.append(
                    audio=base64.b64encode(data[i:i + step]).decode())
                due = t0 + (i + step) / BYTES_PER_MS / 1000 / speed
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            if not vad:
                await conn.input_audio_buffer.commit()
                await conn.response.create()

        sender = asyncio.create_task(send())
        try:
            async with asyncio.timeout(timeout_s + len(pcm) / BYTES_PER_MS / 1000 / speed):
                async for event in conn:
                    counts[event.type] = counts.get(event.type, 0) + 1
                    if event.type == "conversation.item.input_audio_transcription.completed":
                        if event.transcript:
                            heard.append(event.transcript.strip())
                    elif event.type == "response.output_audio.delta":
                        audio.extend(base64.b64decode(event.delta))
                    elif event.type == "response.output_audio_transcript.done":
                        reply_parts.append(event.transcript)
                    elif event.type == "response.output_text.done":
                        reply_parts.append(event.text)
                    elif event.type == "error":
                        print(f"error event: {event.error.message}", file=sys.stderr)
                    elif event.type == "response.done" and sender.done():
                        break
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    return CallResult(
        heard=" ".join(heard),
        reply=" ".join(p for p in reply_parts if p),
        reply_pcm=bytes(audio),
        reply_audio_ms=len(audio) / BYTES_PER_MS,
        session_id=session_id,
        events=counts,
    )


def _session_id(conn: Any) -> str | None:
    """voxgate's session id, from the upgrade response's header."""
    ws = getattr(conn, "_connection", None)
    response = getattr(ws, "response", None)
    headers = getattr(response, "headers", None)
    return headers.get(SESSION_ID_HEADER) if headers is not None else None


async def fetch_session(base_url: str, key: str, session_id: str, wait_s: float = 10.0) -> dict:
    """voxgate's record of a session, once completed (polls up to ``wait_s``)."""
    url = f"{base_url.rstrip('/')}/v1/sessions/{session_id}"
    deadline = time.monotonic() + wait_s
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        while True:
            async with http.get(url) as resp:
                body = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"GET {url}: HTTP {resp.status}: {body}")
            if body.get("status") == "completed" or time.monotonic() > deadline:
                return body
            await asyncio.sleep(0.1)


def refusal_message(exc: BaseException) -> str | None:
    """The server's reason for refusing a WebSocket upgrade, from its
    OpenAI-style JSON body (``{"error": {"code", "message"}}``): ``"HTTP 401
    invalid_api_key: Incorrect API key provided …"``; None when ``exc`` is
    not a refused upgrade (``websockets.exceptions.InvalidStatus``)."""
    from websockets.exceptions import InvalidStatus

    if not isinstance(exc, InvalidStatus):
        return None
    response = exc.response
    try:
        error = json.loads(response.body or b"")["error"]
        reason = f"{error.get('code') or error.get('type')}: {error['message']}"
    except (ValueError, KeyError, TypeError, AttributeError):
        reason = (response.body or b"").decode("utf-8", "replace").strip()[:200]
    return f"HTTP {response.status_code} {reason}".rstrip()


async def run_call(args: argparse.Namespace) -> int:
    from voxgate.voice.audio import load_pcm16, pcm16_to_wav

    settings = load_settings(args.config)
    base_url = args.url or f"http://{settings.host}:{settings.port}"
    key = args.key or default_key(settings)
    if not key:
        print("voxgate call: no --key given and no demo key in the data directory "
              f"({settings.data_dir}/{DEMO_KEY_FILE}); start `voxgate serve` first",
              file=sys.stderr)
        return 2
    audio = Path(args.audio) if args.audio else SAMPLE
    try:
        with resources.as_file(audio) as path:
            pcm = load_pcm16(path, RATE)
    except (OSError, ValueError) as exc:
        print(f"voxgate call: cannot read {audio}: {exc}", file=sys.stderr)
        return 2
    if not args.json:
        what = args.audio or f"the sample {SAMPLE.name}"
        print(f"streaming {what} ({len(pcm) / BYTES_PER_MS / 1000:.1f} s) to {base_url} …", flush=True)
    try:
        result = await stream_call(base_url, key, pcm, model=args.model, speed=args.speed,
                                   timeout_s=args.timeout, vad=getattr(args, "vad", False))
    except Exception as exc:  # noqa: BLE001 - report any failure plainly
        refusal = refusal_message(exc)
        if refusal:
            print(f"voxgate call: refused: {refusal}", file=sys.stderr)
        elif isinstance(exc, ConnectionRefusedError):
            print(f"voxgate call: nothing listens at {base_url}: start it with `make run` "
                  "(or `voxgate serve`), or give its address with --url", file=sys.stderr)
        else:
            print(f"voxgate call: session failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.write_bytes(pcm16_to_wav(result["reply_pcm"], RATE))
    session = await fetch_session(base_url, key, result["session_id"]) if result["session_id"] else {}
    if args.json:
        print(json.dumps({
            "heard": result["heard"],
            "reply": result["reply"],
            "reply_audio": str(out),
            "reply_audio_ms": round(result["reply_audio_ms"]),
            "session": session,
        }))
        return 0
    print(f"heard:       {result['heard'] or '(nothing)'}")
    print(f"reply:       {result['reply'] or '(nothing)'}")
    print(f"reply audio: {out} ({result['reply_audio_ms'] / 1000:.1f} s)")
    if session:
        verdict = "billable" if session["billable"] else "not billable"
        print(f"session:     {session['id']} — {verdict} (reason: {session['reason']})")
        print(f"             {session.get('rule') or ''}")
        print(f"             connect {session['connect_ms']} ms, duration "
              f"{session['duration_ms'] / 1000:.1f} s, audio in {session['audio_in_ms'] / 1000:.1f} s, "
              f"audio out {session['audio_out_ms'] / 1000:.1f} s, "
              f"{session['bytes_in']} B in / {session['bytes_out']} B out")
    return 0
