"""What the local provider says back.

- ``assistant`` (default): :func:`assistant_reply`, deterministic, one or
  two short sentences built from the user's words (short, so TTS is fast).
- ``chat``: :func:`chat_reply` posts the conversation to an OpenAI-compatible
  ``{chat_url}/chat/completions`` endpoint (OpenAI, Ollama, llama.cpp, ...);
  on any failure the caller falls back to :func:`assistant_reply`.
- ``echo`` needs no responder: the server sends the input audio back.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp

__all__ = ["EMPTY_REPLY", "GREETING", "assistant_reply", "chat_reply"]

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
