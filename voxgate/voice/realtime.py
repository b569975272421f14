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
  :data:`voxgate.models.realtime.SEMANTIC_SILENCE_MS` for its ``eagerness``
  (:mod:`voxgate.voice.input_audio`);
- the ``assistant`` responder calls tools by the rule of
  :mod:`voxgate.voice.tools`, one ``function_call`` per response (the
  ``chat`` responder: the upstream's first ``tool_calls`` entry);
  ``parallel_tool_calls`` is ignored;
- ``max_output_tokens`` counts the estimated tokens of
  :mod:`voxgate.voice.usage` (transcript text plus audio) and stops the
  response between events, ending it ``incomplete``
  (:mod:`voxgate.voice.responses`);
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

The session is handed its engines (:class:`voxgate.voice.engines.Engines`:
STT, TTS, responder settings) by the provider; response generation lives in
:mod:`voxgate.voice.responses`, the input buffer and turn detection in
:mod:`voxgate.voice.input_audio`.

Audio: input is kept as PCM16 at the input format's rate (24 kHz for
``audio/pcm``, 8 kHz for G.711, decoded on arrival). Output deltas are 100 ms
chunks (4 800 bytes of 24 kHz PCM16, 800 bytes of G.711).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from voxgate.errors import InvalidRequest, MalformedEvent, VoxgateError, error_event, new_event_id
from voxgate.voice import audio as A
from voxgate.voice.engines import Engines
from voxgate.voice.faults import Faults, parse_faults
from voxgate.voice.ids import new_id
from voxgate.voice.input_audio import MIN_COMMIT_MS, InputAudio, decode_base64_audio, to_pcm16
from voxgate.voice.items import ResponseParams, parse_item, parse_response_params, public, truncate_segments
from voxgate.voice.responses import CHUNK_MS, Response, Responses
from voxgate.voice.session import SessionConfig
from voxgate.voice.vad import SpeechStarted, SpeechStopped

__all__ = ["RealtimeSession", "CHUNK_MS", "MIN_COMMIT_MS"]

log = logging.getLogger(__name__)


class _ServerError(VoxgateError):
    type = "server_error"
    code = "server_error"


class RealtimeSession:
    """State and tasks of one WebSocket session. :meth:`run` returns when the
    client (or a fault) closes the connection; every task it started is then
    cancelled.

    Args:
        engines: STT, TTS and responder settings handed in by the provider
            (:meth:`voxgate.voice.server.VoiceProvider.engines`).
        ws: the prepared WebSocket; request: its HTTP request (its transport
            is what the ``drop`` / ``stall`` / ``eof`` faults act on).
        model: the ``model`` of ``session.created``.
        faults: the faults asked for in the URL or header (already filtered
            by ``faults_enabled``).
    """

    def __init__(self, engines: Engines, ws: web.WebSocketResponse, request: web.Request,
                 *, model: str, faults: Faults) -> None:
        self.engines = engines
        self.ws = ws
        self.request = request
        self.config = SessionConfig(model=model)
        self.faults = faults
        self.echo = engines.responder == "echo" or faults.echo
        self.started = time.monotonic()
        self.items: dict[str, dict[str, Any]] = {}
        self.input = InputAudio()
        self.transcriptions: dict[str, asyncio.Task[str]] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.responses = Responses(self)
        self._echo: Response | None = None
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

    async def response_done(self, count: int) -> None:
        """After the ``count``-th ``response.done``: the ``server_error`` and
        ``eof`` faults that wait for responses."""
        if self.faults.server_error and self.faults.server_error_ms is None and count == 1:
            await self._server_error()
        if self.faults.eof_after is not None and count == self.faults.eof_after:
            self._eof()

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
        if spec != before and spec and self.engines.faults_enabled:
            try:
                faults = parse_faults(spec)
            except ValueError as exc:
                raise MalformedEvent(str(exc), code="invalid_value", param="session.voxgate_fault") from None
            self.faults = self.faults.merge(faults)
            self._arm_faults(faults)
        self._reset_vad()
        await self.send({"type": "session.updated", "session": self.config.to_dict()})

    def _reset_vad(self) -> None:
        self.input.reset_vad(None if self.echo else self.config.turn_detection)

    # -- input audio ---------------------------------------------------------

    async def _append(self, event: dict[str, Any]) -> None:
        b64: Any = event.get("audio")
        raw = decode_base64_audio(b64)  # a base64 string, or MalformedEvent
        if self.echo:
            await self._echo_chunk(b64, len(raw))
            return
        rate = self.config.input_format.rate
        for ev in self.input.append(to_pcm16(raw, self.config.input_format), rate):
            if isinstance(ev, SpeechStarted):
                await self._speech_started(ev.audio_start_ms)
            elif isinstance(ev, SpeechStopped):
                await self._speech_stopped(ev.audio_end_ms)
        if self.input.idle:
            # Outside speech, keep only the prefix padding (plus 500 ms) of audio.
            keep_ms = (self.config.turn_detection or {}).get("prefix_padding_ms", 300) + 500
            self.input.trim(keep_ms, rate)

    async def _speech_started(self, audio_start_ms: int) -> None:
        item_id = self.input.speech_started(audio_start_ms)
        await self.send({"type": "input_audio_buffer.speech_started",
                         "audio_start_ms": audio_start_ms, "item_id": item_id})
        td = self.config.turn_detection or {}
        if self.responses.current is not None and td.get("interrupt_response", True):
            await self.responses.cancel("turn_detected")

    async def _speech_stopped(self, audio_end_ms: int) -> None:
        item_id = self.input.speech_item_id or new_id("item")
        await self.send({"type": "input_audio_buffer.speech_stopped",
                         "audio_end_ms": audio_end_ms, "item_id": item_id})
        await self._commit(item_id, stt_from=self.input.speech_offset(self.config.input_format.rate))
        td = self.config.turn_detection or {}
        if td.get("create_response", True) and self.responses.current is None:
            await self.responses.start(self._default_params({}))

    async def _commit_event(self, event: dict[str, Any]) -> None:
        if self.echo:
            await self.send({"type": "input_audio_buffer.committed", "previous_item_id": self.last_item_id(),
                             "item_id": new_id("item")})
            await self._echo_finish()
            return
        ms = self.input.buffered_ms(self.config.input_format.rate)
        if ms < MIN_COMMIT_MS:
            raise InvalidRequest(
                f"Error committing input audio buffer: buffer too small. Expected at least {MIN_COMMIT_MS}ms "
                f"of audio, but buffer only has {ms:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty")
        await self._commit(self.input.speech_item_id or new_id("item"))

    async def _commit(self, item_id: str, stt_from: int = 0) -> None:
        rate = self.config.input_format.rate
        pcm, committed_ms = self.input.take(stt_from, rate)
        self._reset_vad()
        previous = self.last_item_id()
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
            await self.engines.ensure_models()
            transcript = await self.engines.recognizer.transcribe(pcm, rate)
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
        self.input.clear()
        self._reset_vad()
        await self.send({"type": "input_audio_buffer.cleared"})

    async def _output_clear(self, event: dict[str, Any]) -> None:
        resp = self.responses.current
        if resp is not None:
            await self.responses.cancel("client_cancelled")
        # response_id is a string in OpenAI's event: the response whose audio is dropped, else the last one.
        rid = resp.id if resp else self.responses.last_id
        await self.send({"type": "output_audio_buffer.cleared", "response_id": rid or ""})

    # -- echo ----------------------------------------------------------------

    async def _echo_chunk(self, b64: str, n_bytes: int) -> None:
        if self._echo is None:
            params = self._default_params({})
            params.modalities = ["audio"]  # echo answers audio with audio whatever the session says
            resp = self._echo = Response(id=new_id("resp"), params=params)
            fmt, voice = self.config.output_format, self.config.voice
            await self.send({"type": "response.created", "response": resp.obj("in_progress", fmt, voice)})
            await self.responses.open_message(resp)
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
        await self.responses.finish(resp, "completed")

    # -- conversation items --------------------------------------------------

    def last_item_id(self) -> str | None:
        """The id of the conversation's last item (None when empty)."""
        return next(reversed(self.items), None)

    def _audio_part(self, b64: Any, param: str) -> bytes:
        return to_pcm16(decode_base64_audio(b64, param), self.config.input_format)

    async def _item_create(self, event: dict[str, Any]) -> None:
        new, pcm = parse_item(event.get("item"), "item", self._audio_part)
        item_id = new["id"]
        if item_id in self.items:
            raise MalformedEvent(f"Item with id '{item_id}' already exists.", code="item_id_exists",
                                 param="item.id")
        previous = event.get("previous_item_id") or self.last_item_id()
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
        if self.responses.current is not None and self.responses.current.item is item:
            await self.responses.cancel("client_cancelled")
        item["_audio_ms"] = end_ms
        segments = item.get("_segments")
        if segments is not None:
            item["content"][ci]["transcript"] = truncate_segments(segments, end_ms)  # Responses.finish replaced content
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
        current = self.responses.current
        if current is not None:
            raise InvalidRequest(f"Conversation already has an active response in progress: {current.id}. "
                                 "Wait until the response is finished before creating a new one.",
                                 code="conversation_already_has_active_response")
        await self.responses.start(params)

    async def _response_cancel(self, event: dict[str, Any]) -> None:
        resp = self.responses.current
        wanted = event.get("response_id")
        if resp is None or (isinstance(wanted, str) and wanted != resp.id):
            raise InvalidRequest("Cancellation failed: no active response found",
                                 code="response_cancel_not_active")
        await self.responses.cancel("client_cancelled")
