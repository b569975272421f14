"""What the local provider says back.

- ``assistant`` (default): :func:`assistant_reply`, deterministic, one or
  two short sentences built from the user's words (short, so TTS is fast).
- ``chat``: :func:`chat_turn` (or :func:`chat_reply`, text only) posts the
  conversation to an OpenAI-compatible ``{chat_url}/chat/completions``
  endpoint (OpenAI, Ollama, llama.cpp, ...), with the session's function
  tools and ``tool_choice`` mapped to chat-completions ``tools`` /
  ``tool_choice``, and its ``tool_calls`` mapped back to Realtime
  ``function_call`` items; on any failure the caller falls back to the
  deterministic rules (:func:`assistant_reply`, :mod:`voxgate.voice.tools`).
- ``echo`` needs no responder: the server sends the input audio back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp

__all__ = ["EMPTY_REPLY", "GREETING", "ChatTurn", "assistant_reply", "chat_messages", "chat_reply", "chat_turn"]

EMPTY_REPLY = "Sorry, I did not catch that."
GREETING = "Hello! How can I help you today?"
_MAX_QUOTED_WORDS = 12

_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(hello|hi|hey|good (morning|afternoon|evening))\b"), GREETING),
    (re.compile(r"\b(bye|goodbye)\b"), "Goodbye! Talk to you soon."),
    (re.compile(r"\b(thank you|thanks)\b"), "You are welcome."),
    (re.compile(r"\bwho are you\b|\byour name\b"), "I am the voxgate local voice assistant."),
]


def assistant_reply(transcript: str | None) -> str:
    """The deterministic reply to ``transcript`` (None: no user turn yet).

    >>> assistant_reply("go forward ten meters")
    'You said: go forward ten meters. I heard 4 words.'
    """
    if transcript is None:
        return GREETING
    words = re.findall(r"[\w']+", transcript.lower())
    if not words:
        return EMPTY_REPLY
    text = " ".join(words)
    for pattern, reply in _RULES:
        if pattern.search(text):
            return reply
    quoted = " ".join(words[:_MAX_QUOTED_WORDS]) + ("..." if len(words) > _MAX_QUOTED_WORDS else ".")
    noun = "word" if len(words) == 1 else "words"
    return f"You said: {quoted} I heard {len(words)} {noun}."


@dataclass
class ChatTurn:
    """What the chat upstream answered: ``text`` and/or ``tool_calls`` as
    ``(name, arguments JSON, call id)``."""

    text: str | None = None
    tool_calls: list[tuple[str, str, str | None]] = field(default_factory=list)


def chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Realtime conversation items as chat-completions messages: messages by
    role and text (empty ones left out), ``function_call`` as an assistant
    message with ``tool_calls``, ``function_call_output`` as a ``tool``
    message."""
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "function_call":
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": item.get("call_id"), "type": "function",
                 "function": {"name": item.get("name"), "arguments": item.get("arguments", "")}}]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": item.get("output", "")})
        elif item.get("role") in ("user", "assistant", "system"):
            text = " ".join((p.get("text") or p.get("transcript") or "") for p in item.get("content", [])).strip()
            if text:
                messages.append({"role": item["role"], "content": text})
    return messages


def _chat_tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice if choice in ("auto", "none", "required") else "auto"


async def chat_turn(
    http: aiohttp.ClientSession,
    *,
    chat_url: str,
    model: str,
    instructions: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    tool_choice: Any = "auto",
    api_key: str | None = None,
    timeout_s: float = 30.0,
) -> ChatTurn:
    """One chat-completions round trip. ``tools`` are Realtime function tools
    (``{"type": "function", "name", "description", "parameters"}``), sent as
    ``{"type": "function", "function": {…}}``; no ``tools`` key without
    them.

    Raises:
        aiohttp.ClientError, asyncio.TimeoutError: transport failures.
        ValueError: a non-2xx status, or a body with neither text in
            ``choices[0].message.content`` nor ``tool_calls``.
    """
    body: dict[str, Any] = {"model": model, "messages": ([{"role": "system", "content": instructions}]
                                                          if instructions else []) + messages, "stream": False}
    if tools:
        body["tools"] = [{"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters")
                                                           if k in t}} for t in tools]
        body["tool_choice"] = _chat_tool_choice(tool_choice)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = chat_url.rstrip("/") + "/chat/completions"
    async with http.post(url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
        if resp.status >= 300:
            raise ValueError(f"chat endpoint returned HTTP {resp.status}")
        answer = await resp.json(content_type=None)
    try:
        message = answer["choices"][0]["message"]
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError("chat endpoint returned no choices[0].message") from exc
    turn = ChatTurn()
    for call in (message.get("tool_calls") or []) if isinstance(message, dict) else []:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            args = fn.get("arguments")
            turn.tool_calls.append((fn["name"], args if isinstance(args, str) else "{}",
                                    call.get("id") if isinstance(call.get("id"), str) else None))
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str) and content.strip():
        turn.text = content.strip()
    if turn.text is None and not turn.tool_calls:
        raise ValueError("chat endpoint returned an empty reply")
    return turn


async def chat_reply(
    http: aiohttp.ClientSession,
    *,
    chat_url: str,
    model: str,
    instructions: str,
    history: list[dict[str, str]],
    api_key: str | None = None,
    timeout_s: float = 30.0,
) -> str:
    """Ask an OpenAI-compatible chat-completions endpoint for the reply.

    ``history`` is a list of ``{"role": "user"|"assistant", "content": str}``;
    ``instructions`` becomes the system message.

    Raises:
        aiohttp.ClientError, asyncio.TimeoutError: transport failures.
        ValueError: a non-2xx status or a body without
            ``choices[0].message.content``.
    """
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    messages.extend(history)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = chat_url.rstrip("/") + "/chat/completions"
    async with http.post(
        url,
        json={"model": model, "messages": messages, "stream": False},
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    ) as resp:
        if resp.status >= 300:
            raise ValueError(f"chat endpoint returned HTTP {resp.status}")
        body = await resp.json(content_type=None)
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError("chat endpoint returned no choices[0].message.content") from exc
    if not isinstance(content, str) or not content.strip():
        raise ValueError("chat endpoint returned an empty reply")
    return content.strip()
