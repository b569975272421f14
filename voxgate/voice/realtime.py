"""One Realtime session of the local provider: reads client events, runs
turn detection, transcription and responses, writes server events.

Event shapes follow the OpenAI Realtime GA reference
(https://platform.openai.com/docs/api-reference/realtime-client-events,
.../realtime-server-events) and the ``openai`` SDK's
``openai.types.realtime`` models. Deliberate differences:

- ``conversation.item.input_audio_transcription.delta`` (one, the whole
  transcript) and ``.completed`` are sent for every committed audio item
  only when ``audio.input.transcription`` is configured (OpenAI's default
  is null, and then no transcription event is sent; the audio is still
  transcribed for the responder);
- ``semantic_vad`` is approximated by server VAD with the silence of
  :data:`voxgate.models.realtime.SEMANTIC_SILENCE_MS` for its ``eagerness``;
- the ``assistant`` responder calls tools by the rule of
  :mod:`voxgate.voice.tools`, one ``function_call`` per response (the
  ``chat`` responder: the upstream's first ``tool_calls`` entry);
  ``parallel_tool_calls`` is ignored;
- ``max_output_tokens`` counts the estimated tokens of
  :mod:`voxgate.voice.session` (transcript text plus audio) and stops the
  response between events, ending it ``incomplete``;
- ``conversation.item.truncate`` keeps the transcript of the sentences heard
  (:func:`voxgate.voice.items.truncate_segments`). Truncating the item of the
  response in progress (what the Agents SDKs send alone on an interruption
  when ``turn_detection.interrupt_response`` is true) first ends that
  response as ``response.cancel`` does (open parts closed, item
  ``incomplete``, ``response.done`` ``cancelled`` / ``client_cancelled``), then
  answers ``conversation.item.truncated``: the reference says only that the
  audio past ``audio_end_ms`` and its transcript are removed, so nothing
  more may be generated for that item;
- ``output_audio_buffer.clear`` is accepted on WebSockets (it cancels the
  response in progress and answers ``output_audio_buffer.cleared``);
- echo mode: every ``input_audio_buffer.append`` is answered at once with a
  ``response.output_audio.delta`` carrying the same base64 string, inside one
  response that opens at the first chunk and ends (``response.done``,
  completed) at ``input_audio_buffer.commit`` or ``.clear``. No VAD, STT or
  TTS; the delta is built by string concatenation, not re-serialised.

Audio: input is kept as PCM16 at the input format's rate (24 kHz for
``audio/pcm``, 8 kHz for G.711, decoded on arrival). Output deltas are 100 ms
chunks (4 800 bytes of 24 kHz PCM16, 800 bytes of G.711).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import WSMsgType, web

from voxgate.errors import InvalidRequest, MalformedEvent, VoxgateError, error_event, new_event_id
from voxgate.models.realtime import AudioFormat
from voxgate.voice import audio as A
from voxgate.voice import responder
from voxgate.voice.faults import PROVIDER_RATE_LIMITS, Faults, parse_faults
from voxgate.voice.items import (
    InputBlock,
    ResponseParams,
    cached_tokens,
    input_blocks,
    item_text,
    parse_item,
    parse_response_params,
    public,
    truncate_segments,
)
from voxgate.voice.session import (
    SessionConfig,
    new_id,
    output_audio_tokens,
    text_tokens,
    usage,
    vad_parameters,
)
from voxgate.voice.tools import choose_tool, function_tools, output_reply
from voxgate.voice.tts import split_sentences
from voxgate.voice.vad import SpeechStarted, SpeechStopped, TurnDetector

if TYPE_CHECKING:
    from voxgate.voice.server import VoiceProvider

__all__ = ["RealtimeSession", "CHUNK_MS", "MIN_COMMIT_MS"]

log = logging.getLogger(__name__)

CHUNK_MS = 100
"""Output audio per ``response.output_audio.delta``, in ms."""
MIN_COMMIT_MS = 100
"""OpenAI refuses to commit less than 100 ms of audio."""
ARGUMENT_CHUNK = 16
"""Characters of function call arguments per ``response.function_call_arguments.delta``."""


FAILED_RESPONSE_ERROR = {"type": "server_error", "code": "server_error",
                         "message": "The server had an error while processing your request (injected fault)."}
"""``status_details.error`` of a response the ``fail_responses`` fault fails."""


class _ServerError(VoxgateError):
    type = "server_error"
    code = "server_error"


@dataclass
class _Response:
    """One response in progress: its parameters and what has been sent."""

    id: str
    params: ResponseParams
    item_id: str = field(default_factory=lambda: new_id("item"))
    task: asyncio.Task[None] | None = None
    context: list[dict[str, Any]] = field(default_factory=list)  # items the reply is computed from
    item: dict[str, Any] | None = None  # the output item, once response.output_item.added is sent
    previous_item_id: str | None = None  # the item before it, as conversation.item.added said
    part_open: bool = False  # response.content_part.added sent, .done not yet
    finished: bool = False  # response.done sent
    text: str = ""  # text or transcript sent
    arguments: str = ""  # function call arguments sent
    segments: list[tuple[float, float, str]] = field(default_factory=list)  # (start_ms, duration_ms, text)
    audio_out_ms: float = 0.0
    in_text_tokens: int = 0
    in_audio_tokens: int = 0
    cached_text_tokens: int = 0
    cached_audio_tokens: int = 0

    @property
    def audio(self) -> bool:
        return "audio" in self.params.modalities

    @property
    def conversation(self) -> bool:
        return self.params.conversation

    @property
    def max_tokens(self) -> int | None:
        limit = self.params.max_output_tokens
        return limit if isinstance(limit, int) else None

    def obj(self, status: str, out_fmt: AudioFormat, voice: str, output: list[dict[str, Any]] | None = None,
            status_details: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``realtime.response`` object (usage only once done)."""
        out_audio = output_audio_tokens(self.audio_out_ms) if self.audio else 0
        out_text = text_tokens(self.text) + text_tokens(self.arguments)
        done = status != "in_progress"
        return {
            "object": "realtime.response",
            "id": self.id,
            "status": status,
            "status_details": status_details,
            "output": output or [],
            "conversation_id": "conv_" + self.id[5:] if self.conversation else None,
            "output_modalities": list(self.params.modalities),
            "max_output_tokens": self.params.max_output_tokens,
            "audio": {"output": {"format": out_fmt.to_session(), "voice": voice}},
            "metadata": self.params.metadata,
            "usage": usage(in_text=self.in_text_tokens, in_audio=self.in_audio_tokens,
                           out_text=out_text, out_audio=out_audio, cached_text=self.cached_text_tokens,
                           cached_audio=self.cached_audio_tokens) if done else None,
        }


class RealtimeSession:
    """State and tasks of one WebSocket session. :meth:`run` returns when the
    client (or a fault) closes the connection; every task it started is then
    cancelled."""

    def __init__(self, provider: VoiceProvider, ws: web.WebSocketResponse, request: web.Request,
                 *, model: str, faults: Faults) -> None:
        self.provider = provider
        self.ws = ws
        self.request = request
        self.config = SessionConfig(model=model)
        self.faults = faults
        self.echo = provider.settings.responder == "echo" or faults.echo
        self.started = time.monotonic()
        self.items: dict[str, dict[str, Any]] = {}
        self.buffer = bytearray()  # PCM16 at config.input_format.rate
        self.audio_ms = 0.0  # input audio appended this session, in ms
        self.buffer_start_ms = 0.0  # audio position of buffer[0]
        self.vad: TurnDetector | None = None
        self._vad_carry = b""
        self.speech_item_id: str | None = None
        self.speech_start_ms = 0.0
        self.response: _Response | None = None
        self.transcriptions: dict[str, asyncio.Task[str]] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.responses_done = 0
        self.last_response_id: str | None = None
        self._last_input: list[InputBlock] = []  # what the previous response read, for cached tokens
        self._echo: _Response | None = None
        self._echo_prefix = ""
        self._echo_bytes = 0
        self._send_lock = asyncio.Lock()
        self.closing = False
        self._reset_vad()
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit_event,
            "input_audio_buffer.clear": self._clear,
            "output_audio_buffer.clear": self._output_clear,
            "conversation.item.create": self._item_create,
            "conversation.item.delete": self._item_delete,
            "conversation.item.retrieve": self._item_retrieve,
            "conversation.item.truncate": self._item_truncate,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
        }

    # -- I/O -----------------------------------------------------------------

    async def send(self, event: dict[str, Any]) -> None:
        """Send one server event (adds ``event_id``). Silently dropped once the
        connection is closing."""
        event.setdefault("event_id", new_event_id())
        await self.send_text(orjson.dumps(event).decode())

    async def send_text(self, text: str) -> None:
        if self.closing or self.ws.closed:
            return
        try:
            async with self._send_lock:
                await self.ws.send_str(text)
        except (ConnectionError, RuntimeError):
            self.closing = True

    async def send_error(self, err: VoxgateError) -> None:
        await self.send_text(error_event(err))

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("voice session task failed", exc_info=task.exception())

    async def run(self) -> None:
        try:
            if self.faults.delay_created_ms:
                await asyncio.sleep(self.faults.delay_created_ms / 1000)
            await self.send({"type": "session.created", "session": self.config.to_dict()})
            self._arm_faults(self.faults)  # timers still count from the session's start
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    await self.handle_text(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await self.send_error(MalformedEvent("Binary frames are not supported; send JSON text.",
                                                         code="invalid_json"))
                else:
                    break
        finally:
            await self.close_tasks()

    async def close_tasks(self) -> None:
        """Stop all work of this session (pending STT/TTS, timers)."""
        self.closing = True
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def shutdown(self) -> None:
        """Close the WebSocket with 1001 (going away) and stop all work."""
        self.closing = True
        with contextlib.suppress(Exception):
            await self.ws.close(code=1001, message=b"server shutting down")
        await self.close_tasks()

    # -- faults --------------------------------------------------------------

    def _arm_faults(self, faults: Faults) -> None:
        elapsed_ms = (time.monotonic() - self.started) * 1000
        if faults.echo:
            self.echo = True
        if faults.drop_ms is not None:
            self.spawn(self._fault_later(max(0.0, faults.drop_ms - elapsed_ms), self._drop))
        if faults.stall_ms is not None:
            self.spawn(self._fault_later(max(0.0, faults.stall_ms - elapsed_ms), self._stall))
        if faults.close_code is not None:
            code = faults.close_code
            self.spawn(self._fault_later(0.0, lambda: self.ws.close(code=code, message=b"voxgate fault")))
        if faults.server_error and faults.server_error_ms is not None:
            self.spawn(self._fault_later(max(0.0, faults.server_error_ms - elapsed_ms), self._server_error))

    async def _fault_later(self, delay_ms: float, action: Callable[[], Awaitable[Any]]) -> None:
        await asyncio.sleep(delay_ms / 1000)
        await action()

    async def _drop(self) -> None:
        """Abort the TCP connection: no close frame."""
        self.closing = True
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    async def _stall(self) -> None:
        """Go silent: read nothing (no pong for a ping) and send nothing; the
        TCP connection stays open."""
        self.closing = True
        transport = self.request.transport
        if transport is not None:
            transport.pause_reading()

    def _eof(self) -> None:
        """Close the TCP connection once what was sent is flushed: the client
        reads EOF, no close frame."""
        self.closing = True
        transport = self.request.transport
        if transport is not None:
            transport.close()

    async def _server_error(self) -> None:
        await self.send_error(_ServerError("The server had an error while processing your request (injected fault)."))

    # -- dispatch ------------------------------------------------------------

    async def handle_text(self, data: str) -> None:
        """Parse and dispatch one client event; protocol errors become ``error``
        events and the session goes on."""
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            await self.send_error(MalformedEvent(f"We could not parse the JSON body of your event: {exc}",
                                                 code="invalid_json"))
            return
        if not isinstance(event, dict):
            await self.send_error(MalformedEvent("Invalid event: expected a JSON object.", code="invalid_json"))
            return
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        etype = event.get("type")
        try:
            if not isinstance(etype, str):
                raise MalformedEvent("Missing required parameter: 'type'.",
                                     code="missing_required_parameter", param="type")
            handler = self._handlers.get(etype)
            if handler is None:
                raise MalformedEvent(f"Invalid value: '{etype}'. Supported values are: "
                                     + ", ".join(f"'{t}'" for t in self._handlers) + ".",
                                     code="invalid_value", param="type")
            await handler(event)
        except VoxgateError as err:
            err.event_id = event_id
            await self.send_error(err)
        except Exception as exc:  # never let one event kill the session
            log.exception("voice session: error handling %s", etype)
            server_err = _ServerError(f"The server had an error while processing your request: {exc}")
            server_err.event_id = event_id
            await self.send_error(server_err)

    # -- session -------------------------------------------------------------

    async def _session_update(self, event: dict[str, Any]) -> None:
        before = self.config.voxgate_fault
        self.config.update(event.get("session"))
        spec = self.config.voxgate_fault
        if spec != before and spec and self.provider.settings.faults_enabled:
            try:
                faults = parse_faults(spec)
            except ValueError as exc:
                raise MalformedEvent(str(exc), code="invalid_value", param="session.voxgate_fault") from None
            self.faults = self.faults.merge(faults)
            self._arm_faults(faults)
        self._reset_vad()
        await self.send({"type": "session.updated", "session": self.config.to_dict()})

    def _reset_vad(self) -> None:
        td = self.config.turn_detection
        if td is None or self.echo:
            self.vad = None
            return
        threshold, prefix_padding_ms, silence_duration_ms = vad_parameters(td)
        self.vad = TurnDetector(threshold=threshold, prefix_padding_ms=prefix_padding_ms,
                                silence_duration_ms=silence_duration_ms, start_ms=self.audio_ms)
        self._vad_carry = b""
        self.speech_item_id = None

    # -- input audio ---------------------------------------------------------

    def _decode_audio(self, b64: Any, param: str = "audio") -> bytes:
        if not isinstance(b64, str):
            raise MalformedEvent(f"Invalid type for '{param}': expected a base64 string.",
                                 code="invalid_value", param=param)
        try:
            return binascii.a2b_base64(b64, strict_mode=True)
        except (binascii.Error, ValueError):
            raise MalformedEvent("Invalid base64 audio data.", code="invalid_base64", param=param) from None

    def _to_pcm(self, raw: bytes) -> bytes:
        fmt = self.config.input_format
        if fmt.type == "audio/pcmu":
            return A.ulaw_decode(raw)
        if fmt.type == "audio/pcma":
            return A.alaw_decode(raw)
        return raw[: len(raw) - len(raw) % 2]

    async def _append(self, event: dict[str, Any]) -> None:
        b64: Any = event.get("audio")
        raw = self._decode_audio(b64)  # a base64 string, or MalformedEvent
        if self.echo:
            await self._echo_chunk(b64, len(raw))
            return
        pcm = self._to_pcm(raw)
        rate = self.config.input_format.rate
        self.buffer += pcm
        self.audio_ms += A.pcm16_ms(len(pcm), rate)
        if self.vad is None:
            return
        data = self._vad_carry + pcm
        if rate == 24000:
            usable = len(data) - len(data) % 6
            self._vad_carry, data = data[usable:], A.decimate3(data[:usable])
        for ev in self.vad.feed(data):
            if isinstance(ev, SpeechStarted):
                await self._speech_started(ev.audio_start_ms)
            elif isinstance(ev, SpeechStopped):
                await self._speech_stopped(ev.audio_end_ms)
        if not self.vad.in_speech:
            self._trim_buffer()

    def _trim_buffer(self) -> None:
        """Outside speech, keep only the prefix padding (plus 500 ms) of audio."""
        rate = self.config.input_format.rate
        keep_ms = (self.config.turn_detection or {}).get("prefix_padding_ms", 300) + 500
        keep = int(keep_ms * rate / 1000) * 2
        if len(self.buffer) > 2 * keep:
            drop = len(self.buffer) - keep
            del self.buffer[:drop]
            self.buffer_start_ms += A.pcm16_ms(drop, rate)

    async def _speech_started(self, audio_start_ms: int) -> None:
        self.speech_item_id = new_id("item")
        self.speech_start_ms = audio_start_ms
        await self.send({"type": "input_audio_buffer.speech_started",
                         "audio_start_ms": audio_start_ms, "item_id": self.speech_item_id})
        td = self.config.turn_detection or {}
        if self.response is not None and td.get("interrupt_response", True):
            await self._cancel_response("turn_detected")

    async def _speech_stopped(self, audio_end_ms: int) -> None:
        item_id = self.speech_item_id or new_id("item")
        await self.send({"type": "input_audio_buffer.speech_stopped",
                         "audio_end_ms": audio_end_ms, "item_id": item_id})
        rate = self.config.input_format.rate
        start = max(0, int((self.speech_start_ms - self.buffer_start_ms) * rate / 1000) * 2)
        await self._commit(item_id, stt_from=start)
        td = self.config.turn_detection or {}
        if td.get("create_response", True) and self.response is None:
            await self._start_response(self._default_params({}))

    async def _commit_event(self, event: dict[str, Any]) -> None:
        if self.echo:
            await self.send({"type": "input_audio_buffer.committed", "previous_item_id": self._last_item_id(),
                             "item_id": new_id("item")})
            await self._echo_finish()
            return
        ms = A.pcm16_ms(len(self.buffer), self.config.input_format.rate)
        if ms < MIN_COMMIT_MS:
            raise InvalidRequest(
                f"Error committing input audio buffer: buffer too small. Expected at least {MIN_COMMIT_MS}ms "
                f"of audio, but buffer only has {ms:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty")
        await self._commit(self.speech_item_id or new_id("item"))

    async def _commit(self, item_id: str, stt_from: int = 0) -> None:
        rate = self.config.input_format.rate
        pcm = bytes(self.buffer[stt_from:])
        committed_ms = A.pcm16_ms(len(self.buffer), rate)
        self.buffer.clear()
        self.buffer_start_ms = self.audio_ms
        self._reset_vad()
        previous = self._last_item_id()
        item: dict[str, Any] = {"id": item_id, "object": "realtime.item", "type": "message",
                                "status": "completed", "role": "user",
                                "content": [{"type": "input_audio", "transcript": None}]}
        self.items[item_id] = item
        await self.send({"type": "input_audio_buffer.committed", "previous_item_id": previous, "item_id": item_id})
        await self.send({"type": "conversation.item.added", "previous_item_id": previous, "item": item})
        await self.send({"type": "conversation.item.done", "previous_item_id": previous, "item": item})
        item["_audio_ms"] = committed_ms
        self.transcriptions[item_id] = self.spawn(self._transcribe(item_id, pcm, rate))

    async def _transcribe(self, item_id: str, pcm: bytes, rate: int) -> str:
        try:
            await self.provider.ensure_models()
            transcript = await self.provider.recognizer.transcribe(pcm, rate)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("transcription failed")
            if not self.config.transcription_events:
                return ""
            await self.send({"type": "conversation.item.input_audio_transcription.failed", "item_id": item_id,
                             "content_index": 0,
                             "error": {"type": "server_error", "code": "transcription_failed",
                                       "message": str(exc), "param": None}})
            return ""
        finally:
            self.transcriptions.pop(item_id, None)
        item = self.items.get(item_id)
        if item is not None:
            item["content"][0]["transcript"] = transcript
        if not self.config.transcription_events:
            return transcript
        # PocketSphinx decodes the whole turn at once: one delta with all of it, as OpenAI's
        # non-streaming transcription models send.
        await self.send({"type": "conversation.item.input_audio_transcription.delta", "item_id": item_id,
                         "content_index": 0, "delta": transcript})
        await self.send({"type": "conversation.item.input_audio_transcription.completed", "item_id": item_id,
                         "content_index": 0, "transcript": transcript,
                         "usage": {"type": "duration", "seconds": round(A.pcm16_ms(len(pcm), rate) / 1000, 3)}})
        return transcript

    async def _clear(self, event: dict[str, Any]) -> None:
        if self.echo:
            await self.send({"type": "input_audio_buffer.cleared"})
            await self._echo_finish()
            return
        self.buffer.clear()
        self.buffer_start_ms = self.audio_ms
        self._reset_vad()
        await self.send({"type": "input_audio_buffer.cleared"})

    async def _output_clear(self, event: dict[str, Any]) -> None:
        resp = self.response
        if resp is not None:
            await self._cancel_response("client_cancelled")
        # response_id is a string in OpenAI's event: the response whose audio is dropped, else the last one.
        rid = resp.id if resp else self.last_response_id
        await self.send({"type": "output_audio_buffer.cleared", "response_id": rid or ""})

    # -- echo ----------------------------------------------------------------

    async def _echo_chunk(self, b64: str, n_bytes: int) -> None:
        if self._echo is None:
            params = self._default_params({})
            params.modalities = ["audio"]  # echo answers audio with audio whatever the session says
            resp = self._echo = _Response(id=new_id("resp"), params=params)
            fmt, voice = self.config.output_format, self.config.voice
            await self.send({"type": "response.created", "response": resp.obj("in_progress", fmt, voice)})
            await self._open_message(resp)
            self._echo_prefix = ('{"type":"response.output_audio.delta","response_id":"' + resp.id
                                 + '","item_id":"' + resp.item_id
                                 + '","output_index":0,"content_index":0,"event_id":"')
            self._echo_bytes = 0
        self._echo_bytes += n_bytes
        await self.send_text(self._echo_prefix + new_event_id() + '","delta":"' + b64 + '"}')

    async def _echo_finish(self) -> None:
        resp, self._echo = self._echo, None
        if resp is None:
            return
        fmt = self.config.input_format
        resp.audio_out_ms = fmt.ms_from_bytes(self._echo_bytes)
        await self._finish(resp, "completed")

    # -- conversation items --------------------------------------------------

    def _last_item_id(self) -> str | None:
        return next(reversed(self.items), None)

    def _audio_part(self, b64: Any, param: str) -> bytes:
        return self._to_pcm(self._decode_audio(b64, param))

    async def _item_create(self, event: dict[str, Any]) -> None:
        new, pcm = parse_item(event.get("item"), "item", self._audio_part)
        item_id = new["id"]
        if item_id in self.items:
            raise MalformedEvent(f"Item with id '{item_id}' already exists.", code="item_id_exists",
                                 param="item.id")
        previous = event.get("previous_item_id") or self._last_item_id()
        self.items[item_id] = new
        await self.send({"type": "conversation.item.added", "previous_item_id": previous, "item": public(new)})
        await self.send({"type": "conversation.item.done", "previous_item_id": previous, "item": public(new)})
        if pcm is not None:
            new["_audio_ms"] = A.pcm16_ms(len(pcm), self.config.input_format.rate)
            self.transcriptions[item_id] = self.spawn(
                self._transcribe(item_id, pcm, self.config.input_format.rate))

    def _item(self, event: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        item_id = event.get("item_id")
        if not isinstance(item_id, str):
            raise MalformedEvent("Missing required parameter: 'item_id'.", code="missing_required_parameter",
                                 param="item_id")
        if item_id not in self.items:
            raise MalformedEvent(f"Item with item_id not found: {item_id}", code="item_not_found",
                                 param="item_id")
        return item_id, self.items[item_id]

    async def _item_delete(self, event: dict[str, Any]) -> None:
        item_id, _ = self._item(event)
        del self.items[item_id]
        await self.send({"type": "conversation.item.deleted", "item_id": item_id})

    async def _item_retrieve(self, event: dict[str, Any]) -> None:
        _, item = self._item(event)
        await self.send({"type": "conversation.item.retrieved", "item": public(item)})

    async def _item_truncate(self, event: dict[str, Any]) -> None:
        """``conversation.item.truncate``: drop an assistant item's audio after
        ``audio_end_ms`` and its transcript beyond what was heard
        (:func:`voxgate.voice.items.truncate_segments`). The item of the
        response in progress ends that response first (cancelled, reason
        ``client_cancelled``), so no audio or transcript follows the cut
        (https://platform.openai.com/docs/api-reference/realtime-client-events/conversation/item/truncate)."""
        item_id, item = self._item(event)
        ci, end_ms = event.get("content_index", 0), event.get("audio_end_ms")
        content = item.get("content", [])
        if not isinstance(ci, int) or isinstance(ci, bool) or not 0 <= ci < len(content):
            raise MalformedEvent("Invalid value for 'content_index'.", code="invalid_value", param="content_index")
        if not isinstance(end_ms, int) or isinstance(end_ms, bool) or end_ms < 0:
            raise MalformedEvent("Invalid value for 'audio_end_ms': expected a non-negative integer.",
                                 code="invalid_value", param="audio_end_ms")
        if item.get("role") != "assistant" or content[ci].get("type") != "output_audio":
            raise MalformedEvent("Only assistant messages with audio can be truncated.", code="invalid_value",
                                 param="item_id")
        if end_ms > item.get("_audio_ms", 0) + 1:
            raise MalformedEvent(f"Audio content of {item.get('_audio_ms', 0):.0f}ms is already shorter than "
                                 f"{end_ms}ms", code="invalid_value", param="audio_end_ms")
        if self.response is not None and self.response.item is item:
            await self._cancel_response("client_cancelled")
        item["_audio_ms"] = end_ms
        segments = item.get("_segments")
        if segments is not None:
            item["content"][ci]["transcript"] = truncate_segments(segments, end_ms)  # _finish replaced content
            item["_segments"] = [s for s in segments if s[0] < end_ms]
        await self.send({"type": "conversation.item.truncated", "item_id": item_id, "content_index": ci,
                         "audio_end_ms": end_ms})

    # -- responses -----------------------------------------------------------

    def _default_params(self, params: Any, items: dict[str, dict[str, Any]] | None = None) -> ResponseParams:
        cfg = self.config
        return parse_response_params(params, modalities=cfg.output_modalities, instructions=cfg.instructions,
                                     tools=cfg.tools, tool_choice=cfg.tool_choice,
                                     max_output_tokens=cfg.max_output_tokens, items=self.items if items is None
                                     else items, to_pcm=self._audio_part)

    async def _response_create(self, event: dict[str, Any]) -> None:
        params = self._default_params(event.get("response"))
        if self.response is not None:
            raise InvalidRequest(f"Conversation already has an active response in progress: {self.response.id}. "
                                 "Wait until the response is finished before creating a new one.",
                                 code="conversation_already_has_active_response")
        await self._start_response(params)

    async def _start_response(self, params: ResponseParams) -> None:
        resp = _Response(id=new_id("resp"), params=params)
        self.response = resp
        self.last_response_id = resp.id
        resp.task = self.spawn(self._run_response(resp))

    async def _response_cancel(self, event: dict[str, Any]) -> None:
        resp = self.response
        wanted = event.get("response_id")
        if resp is None or (isinstance(wanted, str) and wanted != resp.id):
            raise InvalidRequest("Cancellation failed: no active response found",
                                 code="response_cancel_not_active")
        await self._cancel_response("client_cancelled")

    async def _cancel_response(self, reason: str) -> None:
        """Stop the response in progress; close its open part and item
        (status ``incomplete``) and send ``response.done`` ``cancelled``."""
        resp, self.response = self.response, None
        if resp is None or resp.task is None:
            return
        resp.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await resp.task
        if not resp.finished:
            await self._finish(resp, "cancelled", {"type": "cancelled", "reason": reason})

    async def _rsend(self, event: dict[str, Any]) -> None:
        """Send one event of a response task: once begun, a send completes even
        if the task is cancelled, so the response's bookkeeping (updated
        before the call) always matches what the client received."""
        await asyncio.shield(self.send(event))

    async def _open_message(self, resp: _Response) -> None:
        audio = resp.audio
        item: dict[str, Any] = {"id": resp.item_id, "object": "realtime.item", "type": "message",
                                "status": "in_progress", "role": "assistant", "content": []}
        await self._open_item(resp, item)
        part = {"type": "audio", "transcript": ""} if audio else {"type": "text", "text": ""}
        item["content"] = [{"type": "output_audio", "transcript": ""} if audio else {"type": "output_text",
                                                                                        "text": ""}]
        resp.part_open = True
        await self._rsend({"type": "response.content_part.added", "response_id": resp.id, "item_id": resp.item_id,
                           "output_index": 0, "content_index": 0, "part": part})

    async def _open_item(self, resp: _Response, item: dict[str, Any]) -> None:
        previous = resp.previous_item_id = self._last_item_id()
        resp.item = item
        if resp.conversation:
            self.items[resp.item_id] = item
        added = public(item) | {"content": []} if item["type"] == "message" else public(item)
        await self._rsend({"type": "response.output_item.added", "response_id": resp.id, "output_index": 0,
                           "item": added})
        if resp.conversation:
            await self._rsend({"type": "conversation.item.added", "previous_item_id": previous, "item": added})

    async def _finish(self, resp: _Response, status: str, details: dict[str, Any] | None = None) -> None:
        """Close what is open (content part, output item) and send
        ``response.done``. Items end ``completed`` when the response does,
        else ``incomplete``."""
        resp.finished = True
        base = {"response_id": resp.id, "item_id": resp.item_id, "output_index": 0}
        item = resp.item
        if item is not None and item["type"] == "message":
            if resp.part_open:
                resp.part_open = False
                if resp.audio:
                    await self.send({"type": "response.output_audio.done", **base, "content_index": 0})
                    await self.send({"type": "response.output_audio_transcript.done", **base, "content_index": 0,
                                     "transcript": resp.text})
                    part = {"type": "audio", "transcript": resp.text}
                else:
                    await self.send({"type": "response.output_text.done", **base, "content_index": 0,
                                     "text": resp.text})
                    part = {"type": "text", "text": resp.text}
                await self.send({"type": "response.content_part.done", **base, "content_index": 0, "part": part})
            if resp.audio:
                item["content"] = [{"type": "output_audio", "transcript": resp.text}]
                item["_audio_ms"] = resp.audio_out_ms
                item["_segments"] = list(resp.segments)
            else:
                item["content"] = [{"type": "output_text", "text": resp.text}]
        elif item is not None and item["type"] == "function_call":
            item["arguments"] = resp.arguments
            if status == "completed":
                await self.send({"type": "response.function_call_arguments.done", **base,
                                 "call_id": item["call_id"], "name": item["name"], "arguments": resp.arguments})
        output = []
        if item is not None:
            item["status"] = "completed" if status == "completed" else "incomplete"
            output.append(public(item))
            await self.send({"type": "response.output_item.done", "response_id": resp.id, "output_index": 0,
                             "item": public(item)})
            if resp.conversation:
                await self.send({"type": "conversation.item.done", "previous_item_id": resp.previous_item_id,
                                 "item": public(item)})
        self.responses_done += 1
        await self.send({"type": "response.done", "response": resp.obj(
            status, self.config.output_format, self.config.voice, output, details)})
        if self.faults.server_error and self.faults.server_error_ms is None and self.responses_done == 1:
            await self._server_error()
        if self.faults.eof_after is not None and self.responses_done == self.faults.eof_after:
            self._eof()

    async def _run_response(self, resp: _Response) -> None:
        fmt, voice = self.config.output_format, self.config.voice
        self._bind_context(resp)
        await self._rsend({"type": "response.created", "response": resp.obj("in_progress", fmt, voice)})
        if self.faults.rate_limits:
            await self._rsend({"type": "rate_limits.updated", "rate_limits": PROVIDER_RATE_LIMITS})
        # The conversation's input transcriptions are the items', not this
        # response's: shielded, so cancelling the response (barge-in,
        # response.cancel) does not cancel them, and every committed turn gets
        # its conversation.item.input_audio_transcription.completed.
        pending: list[asyncio.Future[Any]] = [asyncio.shield(t) for t in self.transcriptions.values()]
        if resp.params.input_pcm:
            pending += [self.spawn(self._transcribe_input(resp, item_id, pcm))
                        for item_id, pcm in resp.params.input_pcm.items()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        self._count_input(resp)
        if self.faults.fail_responses:
            if self.response is resp:
                self.response = None
            await self._finish(resp, "failed", {"type": "failed", "error": dict(FAILED_RESPONSE_ERROR)})
            return
        reply, call = await self._decide(resp)
        if call is not None:
            complete = await self._stream_call(resp, *call)
        else:
            await self._open_message(resp)
            sentences = split_sentences(reply) or [reply]
            complete = await (self._stream_audio(resp, sentences) if resp.audio else self._stream_text(resp, sentences))
        if self.response is resp:
            self.response = None
        if complete:
            await self._finish(resp, "completed")
        else:
            await self._finish(resp, "incomplete", {"type": "incomplete", "reason": "max_output_tokens"})

    def _sync_item(self, resp: _Response) -> None:
        """Keep the stored item (``conversation.item.retrieve`` mid-response)
        in step with what was sent."""
        if resp.item is None:
            return
        if resp.audio:
            resp.item["content"] = [{"type": "output_audio", "transcript": resp.text}]
            resp.item["_segments"] = list(resp.segments)
        else:
            resp.item["content"] = [{"type": "output_text", "text": resp.text}]

    async def _stream_call(self, resp: _Response, name: str, arguments: str, call_id: str) -> bool:
        item = {"id": resp.item_id, "object": "realtime.item", "type": "function_call", "status": "in_progress",
                "name": name, "call_id": call_id, "arguments": ""}
        await self._open_item(resp, item)
        budget = resp.max_tokens
        if budget is not None and text_tokens(arguments) > budget:
            arguments, complete = arguments[:4 * budget], False
        else:
            complete = True
        for off in range(0, len(arguments), ARGUMENT_CHUNK):
            delta = arguments[off:off + ARGUMENT_CHUNK]
            resp.arguments += delta
            await self._rsend({"type": "response.function_call_arguments.delta", "response_id": resp.id,
                               "item_id": resp.item_id, "output_index": 0, "call_id": call_id, "delta": delta})
        return complete

    async def _stream_text(self, resp: _Response, sentences: list[str]) -> bool:
        base = {"response_id": resp.id, "item_id": resp.item_id, "output_index": 0, "content_index": 0}
        budget = resp.max_tokens
        for i, sentence in enumerate(sentences):
            delta = sentence if i == 0 else " " + sentence
            complete = True
            if budget is not None and text_tokens(resp.text + delta) > budget:
                delta, complete = delta[:4 * budget - len(resp.text)], False
            if delta:
                resp.text += delta
                self._sync_item(resp)
                await self._rsend({"type": "response.output_text.delta", **base, "delta": delta})
            if not complete:
                return False
        return True

    async def _stream_audio(self, resp: _Response, sentences: list[str]) -> bool:
        """Synthesise and stream ``sentences``; False when
        ``max_output_tokens`` stopped it (text tokens of the transcript sent
        plus audio tokens never exceed the budget)."""
        base = {"response_id": resp.id, "item_id": resp.item_id, "output_index": 0, "content_index": 0}
        fmt = self.config.output_format
        synth = self.provider.synthesizer
        await self.provider.ensure_models()
        chunk_bytes = int(fmt.bytes_per_ms * CHUNK_MS)
        loop = asyncio.get_running_loop()
        length_scale = 1.0 / self.config.speed
        budget = resp.max_tokens

        def render(sentence: str) -> bytes:
            pcm = synth.synthesize_sync(sentence, length_scale=length_scale)
            pcm = A.resample_pcm16(pcm, synth.sample_rate, fmt.rate)
            if fmt.type == "audio/pcmu":
                return A.ulaw_encode(pcm)
            if fmt.type == "audio/pcma":
                return A.alaw_encode(pcm)
            return pcm

        futures = [loop.run_in_executor(synth.pool, render, sentences[0])]
        try:
            for i, sentence in enumerate(sentences):
                data = await futures[i]
                if i + 1 < len(sentences):  # synthesise the next sentence while this one is sent
                    futures.append(loop.run_in_executor(synth.pool, render, sentences[i + 1]))
                delta = sentence if i == 0 else " " + sentence
                if budget is not None and (text_tokens(resp.text + delta)
                                           + output_audio_tokens(resp.audio_out_ms)) > budget:
                    return False
                resp.text += delta
                resp.segments.append((resp.audio_out_ms, fmt.ms_from_bytes(len(data)), delta))
                self._sync_item(resp)
                await self._rsend({"type": "response.output_audio_transcript.delta", **base, "delta": delta})
                for off in range(0, len(data), chunk_bytes):
                    chunk = data[off:off + chunk_bytes]
                    chunk_ms = fmt.ms_from_bytes(len(chunk))
                    if budget is not None and (text_tokens(resp.text)
                                               + output_audio_tokens(resp.audio_out_ms + chunk_ms)) > budget:
                        return False
                    resp.audio_out_ms += chunk_ms
                    if resp.item is not None:
                        resp.item["_audio_ms"] = resp.audio_out_ms
                    await self._rsend({"type": "response.output_audio.delta", **base,
                                       "delta": base64.b64encode(chunk).decode()})
            return True
        finally:
            for fut in futures:
                fut.cancel()

    async def _transcribe_input(self, resp: _Response, item_id: str, pcm: bytes) -> None:
        """Transcribe an ``input_audio`` part of an out-of-band response's
        ``input`` (no events: the item is in no conversation)."""
        await self.provider.ensure_models()
        transcript = await self.provider.recognizer.transcribe(pcm, self.config.input_format.rate)
        for item in resp.context:
            if item.get("id") == item_id:
                for part in item["content"]:
                    if part.get("type") == "input_audio" and part.get("transcript") is None:
                        part["transcript"] = transcript

    def _count_input(self, resp: _Response) -> None:
        """Input tokens: the instructions and every item of the response's
        context (:func:`voxgate.voice.items.input_blocks`), and those cached
        from the previous response's input
        (:func:`voxgate.voice.items.cached_tokens`)."""
        rate = self.config.input_format.rate
        blocks = input_blocks(resp.params.instructions, resp.context,
                              {item_id: A.pcm16_ms(len(pcm), rate) for item_id, pcm in resp.params.input_pcm.items()})
        resp.in_text_tokens = sum(b.text_tokens for b in blocks)
        resp.in_audio_tokens = sum(b.audio_tokens for b in blocks)
        resp.cached_text_tokens, resp.cached_audio_tokens = cached_tokens(self._last_input, blocks)
        self._last_input = blocks

    def _bind_context(self, resp: _Response) -> None:
        resp.context = list(self.items.values()) if resp.params.input is None else list(resp.params.input)

    async def _decide(self, resp: _Response) -> tuple[str, tuple[str, str, str] | None]:
        """The reply text, or a function call ``(name, arguments JSON,
        call_id)``: from the chat upstream when configured (falling back to
        the deterministic rules on failure), else from
        :func:`voxgate.voice.tools.choose_tool` and
        :func:`voxgate.voice.responder.assistant_reply`."""
        context = resp.context
        last = context[-1] if context else None
        after_output = last is not None and last.get("type") == "function_call_output"
        user_text = _last_user_text(context)
        user_turn = last is not None and last.get("role") == "user"
        call = choose_tool(resp.params.tools, resp.params.tool_choice, user_text, user_turn=user_turn)
        if call is not None:
            fallback: tuple[str, tuple[str, str, str] | None] = (
                "", (call.name, orjson.dumps(call.arguments).decode(), new_id("call")))
        elif after_output and last is not None:
            fallback = (output_reply(_call_name(context, last.get("call_id")), last.get("output", "")), None)
        else:
            fallback = (responder.assistant_reply(user_text), None)
        settings = self.provider.settings
        if settings.responder != "chat" or not settings.chat_url or self.provider.http is None:
            return fallback
        key = settings.chat_api_key.get_secret_value() if settings.chat_api_key else None
        try:
            turn = await responder.chat_turn(self.provider.http, chat_url=settings.chat_url,
                                             model=settings.chat_model, instructions=resp.params.instructions,
                                             messages=responder.chat_messages(context),
                                             tools=function_tools(resp.params.tools),
                                             tool_choice=resp.params.tool_choice, api_key=key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("chat responder failed, using the assistant reply: %s", exc)
            return fallback
        if turn.tool_calls:
            name, arguments, call_id = turn.tool_calls[0]
            return "", (name, arguments, call_id or new_id("call"))
        return turn.text or "", None


def _last_user_text(context: list[dict[str, Any]]) -> str | None:
    for item in reversed(context):
        if item.get("role") == "user":
            return item_text(item)
    return None


def _call_name(context: list[dict[str, Any]], call_id: Any) -> str | None:
    for item in reversed(context):
        if item.get("type") == "function_call" and item.get("call_id") == call_id:
            name = item.get("name")
            return name if isinstance(name, str) else None
    return None
