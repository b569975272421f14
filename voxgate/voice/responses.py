"""Response generation of the local provider: one ``response.create`` (or
turn) from ``response.created`` to ``response.done``.

Follows the OpenAI Realtime GA server events
(https://platform.openai.com/docs/api-reference/realtime-server-events/response):
``response.created``, ``response.output_item.added``,
``conversation.item.added``, ``response.content_part.added``, then text
(``response.output_text.delta``), audio (``response.output_audio_transcript.delta``
and ``response.output_audio.delta``, 100 ms chunks) or function call arguments
(``response.function_call_arguments.delta``), and the matching ``.done``
events before ``response.done``. The reply comes from the chat upstream of
:class:`voxgate.voice.engines.Engines` when set, else from
:func:`voxgate.voice.tools.choose_tool` and
:func:`voxgate.voice.responder.assistant_reply`; audio from the engines'
synthesizer. ``max_output_tokens`` counts the estimates of
:mod:`voxgate.voice.usage`.

:class:`Responses` works for a :class:`ResponseHost` (the session): it sends
through the host, reads its configuration, conversation and faults, and
tells it when a response is done.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from voxgate.models.realtime import AudioFormat
from voxgate.voice import audio as A
from voxgate.voice import responder
from voxgate.voice.engines import Engines
from voxgate.voice.faults import PROVIDER_RATE_LIMITS, Faults
from voxgate.voice.ids import new_id
from voxgate.voice.items import ResponseParams, item_text, public
from voxgate.voice.session import SessionConfig
from voxgate.voice.tools import choose_tool, function_tools, output_reply
from voxgate.voice.tts import split_sentences
from voxgate.voice.usage import (
    InputBlock,
    cached_tokens,
    input_blocks,
    output_audio_tokens,
    response_usage,
    text_tokens,
)

__all__ = ["Response", "Responses", "ResponseHost", "CHUNK_MS", "ARGUMENT_CHUNK", "FAILED_RESPONSE_ERROR"]

log = logging.getLogger(__name__)

CHUNK_MS = 100
"""Output audio per ``response.output_audio.delta``, in ms."""
ARGUMENT_CHUNK = 16
"""Characters of function call arguments per ``response.function_call_arguments.delta``."""

FAILED_RESPONSE_ERROR = {"type": "server_error", "code": "server_error",
                         "message": "The server had an error while processing your request (injected fault)."}
"""``status_details.error`` of a response the ``fail_responses`` fault fails."""


@dataclass
class Response:
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
            "usage": response_usage(in_text=self.in_text_tokens, in_audio=self.in_audio_tokens,
                                    out_text=out_text, out_audio=out_audio, cached_text=self.cached_text_tokens,
                                    cached_audio=self.cached_audio_tokens) if done else None,
        }


class ResponseHost(Protocol):
    """What response generation needs from its session."""

    config: SessionConfig
    items: dict[str, dict[str, Any]]  # the conversation, in order
    faults: Faults
    engines: Engines
    transcriptions: dict[str, asyncio.Task[str]]  # pending STT of committed items, by item id

    async def send(self, event: dict[str, Any]) -> None:
        """Send one server event."""
        ...

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as one of the session's tasks."""
        ...

    def last_item_id(self) -> str | None:
        """The id of the conversation's last item."""
        ...

    async def response_done(self, count: int) -> None:
        """Called after each ``response.done`` (``count``: responses done so far)."""
        ...


class Responses:
    """The responses of one session: the one in progress (:attr:`current`,
    at most one), the id of the last one, how many are done, and what the
    previous one read (for cached tokens)."""

    def __init__(self, host: ResponseHost) -> None:
        self.host = host
        self.current: Response | None = None
        self.last_id: str | None = None
        self.done_count = 0
        self._last_input: list[InputBlock] = []  # what the previous response read, for cached tokens

    async def start(self, params: ResponseParams) -> None:
        """Begin a response with ``params`` (the caller checked none is in progress)."""
        resp = Response(id=new_id("resp"), params=params)
        self.current = resp
        self.last_id = resp.id
        resp.task = self.host.spawn(self._run(resp))

    async def cancel(self, reason: str) -> None:
        """Stop the response in progress; close its open part and item
        (status ``incomplete``) and send ``response.done`` ``cancelled``."""
        resp, self.current = self.current, None
        if resp is None or resp.task is None:
            return
        resp.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await resp.task
        if not resp.finished:
            await self.finish(resp, "cancelled", {"type": "cancelled", "reason": reason})

    async def _rsend(self, event: dict[str, Any]) -> None:
        """Send one event of a response task: once begun, a send completes even
        if the task is cancelled, so the response's bookkeeping (updated
        before the call) always matches what the client received."""
        await asyncio.shield(self.host.send(event))

    async def open_message(self, resp: Response) -> None:
        """Open ``resp``'s assistant message item and its one content part
        (``output_audio`` or ``output_text``)."""
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

    async def _open_item(self, resp: Response, item: dict[str, Any]) -> None:
        previous = resp.previous_item_id = self.host.last_item_id()
        resp.item = item
        if resp.conversation:
            self.host.items[resp.item_id] = item
        added = public(item) | {"content": []} if item["type"] == "message" else public(item)
        await self._rsend({"type": "response.output_item.added", "response_id": resp.id, "output_index": 0,
                           "item": added})
        if resp.conversation:
            await self._rsend({"type": "conversation.item.added", "previous_item_id": previous, "item": added})

    async def finish(self, resp: Response, status: str, details: dict[str, Any] | None = None) -> None:
        """Close what is open (content part, output item) and send
        ``response.done``. Items end ``completed`` when the response does,
        else ``incomplete``."""
        resp.finished = True
        send = self.host.send
        base = {"response_id": resp.id, "item_id": resp.item_id, "output_index": 0}
        item = resp.item
        if item is not None and item["type"] == "message":
            if resp.part_open:
                resp.part_open = False
                if resp.audio:
                    await send({"type": "response.output_audio.done", **base, "content_index": 0})
                    await send({"type": "response.output_audio_transcript.done", **base, "content_index": 0,
                                "transcript": resp.text})
                    part = {"type": "audio", "transcript": resp.text}
                else:
                    await send({"type": "response.output_text.done", **base, "content_index": 0,
                                "text": resp.text})
                    part = {"type": "text", "text": resp.text}
                await send({"type": "response.content_part.done", **base, "content_index": 0, "part": part})
            if resp.audio:
                item["content"] = [{"type": "output_audio", "transcript": resp.text}]
                item["_audio_ms"] = resp.audio_out_ms
                item["_segments"] = list(resp.segments)
            else:
                item["content"] = [{"type": "output_text", "text": resp.text}]
        elif item is not None and item["type"] == "function_call":
            item["arguments"] = resp.arguments
            if status == "completed":
                await send({"type": "response.function_call_arguments.done", **base,
                            "call_id": item["call_id"], "name": item["name"], "arguments": resp.arguments})
        output = []
        if item is not None:
            item["status"] = "completed" if status == "completed" else "incomplete"
            output.append(public(item))
            await send({"type": "response.output_item.done", "response_id": resp.id, "output_index": 0,
                        "item": public(item)})
            if resp.conversation:
                await send({"type": "conversation.item.done", "previous_item_id": resp.previous_item_id,
                            "item": public(item)})
        self.done_count += 1
        await send({"type": "response.done", "response": resp.obj(
            status, self.host.config.output_format, self.host.config.voice, output, details)})
        await self.host.response_done(self.done_count)

    async def _run(self, resp: Response) -> None:
        fmt, voice = self.host.config.output_format, self.host.config.voice
        self._bind_context(resp)
        await self._rsend({"type": "response.created", "response": resp.obj("in_progress", fmt, voice)})
        if self.host.faults.rate_limits:
            await self._rsend({"type": "rate_limits.updated", "rate_limits": PROVIDER_RATE_LIMITS})
        # The conversation's input transcriptions are the items', not this
        # response's: shielded, so cancelling the response (barge-in,
        # response.cancel) does not cancel them, and every committed turn gets
        # its conversation.item.input_audio_transcription.completed.
        pending: list[asyncio.Future[Any]] = [asyncio.shield(t) for t in self.host.transcriptions.values()]
        if resp.params.input_pcm:
            pending += [self.host.spawn(self._transcribe_input(resp, item_id, pcm))
                        for item_id, pcm in resp.params.input_pcm.items()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        self._count_input(resp)
        if self.host.faults.fail_responses:
            if self.current is resp:
                self.current = None
            await self.finish(resp, "failed", {"type": "failed", "error": dict(FAILED_RESPONSE_ERROR)})
            return
        reply, call = await self._decide(resp)
        if call is not None:
            complete = await self._stream_call(resp, *call)
        else:
            await self.open_message(resp)
            sentences = split_sentences(reply) or [reply]
            complete = await (self._stream_audio(resp, sentences) if resp.audio else self._stream_text(resp, sentences))
        if self.current is resp:
            self.current = None
        if complete:
            await self.finish(resp, "completed")
        else:
            await self.finish(resp, "incomplete", {"type": "incomplete", "reason": "max_output_tokens"})

    def _sync_item(self, resp: Response) -> None:
        """Keep the stored item (``conversation.item.retrieve`` mid-response)
        in step with what was sent."""
        if resp.item is None:
            return
        if resp.audio:
            resp.item["content"] = [{"type": "output_audio", "transcript": resp.text}]
            resp.item["_segments"] = list(resp.segments)
        else:
            resp.item["content"] = [{"type": "output_text", "text": resp.text}]

    async def _stream_call(self, resp: Response, name: str, arguments: str, call_id: str) -> bool:
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

    async def _stream_text(self, resp: Response, sentences: list[str]) -> bool:
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

    async def _stream_audio(self, resp: Response, sentences: list[str]) -> bool:
        """Synthesise and stream ``sentences``; False when
        ``max_output_tokens`` stopped it (text tokens of the transcript sent
        plus audio tokens never exceed the budget)."""
        base = {"response_id": resp.id, "item_id": resp.item_id, "output_index": 0, "content_index": 0}
        fmt = self.host.config.output_format
        synth = self.host.engines.synthesizer
        await self.host.engines.ensure_models()
        chunk_bytes = int(fmt.bytes_per_ms * CHUNK_MS)
        loop = asyncio.get_running_loop()
        length_scale = 1.0 / self.host.config.speed
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

    async def _transcribe_input(self, resp: Response, item_id: str, pcm: bytes) -> None:
        """Transcribe an ``input_audio`` part of an out-of-band response's
        ``input`` (no events: the item is in no conversation)."""
        await self.host.engines.ensure_models()
        transcript = await self.host.engines.recognizer.transcribe(pcm, self.host.config.input_format.rate)
        for item in resp.context:
            if item.get("id") == item_id:
                for part in item["content"]:
                    if part.get("type") == "input_audio" and part.get("transcript") is None:
                        part["transcript"] = transcript

    def _count_input(self, resp: Response) -> None:
        """Input tokens: the instructions and every item of the response's
        context (:func:`voxgate.voice.usage.input_blocks`), and those cached
        from the previous response's input
        (:func:`voxgate.voice.usage.cached_tokens`)."""
        rate = self.host.config.input_format.rate
        blocks = input_blocks(resp.params.instructions, resp.context,
                              {item_id: A.pcm16_ms(len(pcm), rate) for item_id, pcm in resp.params.input_pcm.items()})
        resp.in_text_tokens = sum(b.text_tokens for b in blocks)
        resp.in_audio_tokens = sum(b.audio_tokens for b in blocks)
        resp.cached_text_tokens, resp.cached_audio_tokens = cached_tokens(self._last_input, blocks)
        self._last_input = blocks

    def _bind_context(self, resp: Response) -> None:
        resp.context = list(self.host.items.values()) if resp.params.input is None else list(resp.params.input)

    async def _decide(self, resp: Response) -> tuple[str, tuple[str, str, str] | None]:
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
        chat = self.host.engines.chat
        if chat is None:
            return fallback
        try:
            turn = await responder.chat_turn(chat.http, chat_url=chat.url,
                                             model=chat.model, instructions=resp.params.instructions,
                                             messages=responder.chat_messages(context),
                                             tools=function_tools(resp.params.tools),
                                             tool_choice=resp.params.tool_choice, api_key=chat.api_key)
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
