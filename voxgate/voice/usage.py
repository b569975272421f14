"""Token arithmetic of the local provider: estimates and the
``response.usage`` object. Pure code, no I/O.

Token estimates (documented, not OpenAI's exact tokenizer):

- text: 1 token per 4 characters, rounded up;
- input (user) audio: 1 token per 100 ms;
- output (assistant) audio: 1 token per 50 ms;
- cached input: the tokens of the longest prefix of the input (instructions,
  then items in order) identical to the previous response's input
  (:func:`cached_tokens`).

The usage object follows ``openai.types.realtime.RealtimeResponseUsage``
(https://platform.openai.com/docs/api-reference/realtime-server-events/response/done).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["text_tokens", "input_audio_tokens", "output_audio_tokens", "response_usage",
           "InputBlock", "input_blocks", "cached_tokens"]


def text_tokens(text: str) -> int:
    """Tokens of ``text``: 1 per 4 characters, rounded up."""
    return math.ceil(len(text) / 4)


def input_audio_tokens(ms: float) -> int:
    """Tokens of ``ms`` of user audio: 1 per 100 ms, rounded up."""
    return math.ceil(ms / 100)


def output_audio_tokens(ms: float) -> int:
    """Tokens of ``ms`` of assistant audio: 1 per 50 ms, rounded up."""
    return math.ceil(ms / 50)


def response_usage(*, in_text: int = 0, in_audio: int = 0, out_text: int = 0, out_audio: int = 0,
                   cached_text: int = 0, cached_audio: int = 0) -> dict[str, Any]:
    """A ``response.usage`` object (``openai.types.realtime.RealtimeResponseUsage``)
    from token counts; cached tokens are a subset of the input ones, and the
    local provider takes no images (0 image tokens)."""
    inp, out = in_text + in_audio, out_text + out_audio
    return {
        "total_tokens": inp + out,
        "input_tokens": inp,
        "output_tokens": out,
        "input_token_details": {
            "text_tokens": in_text,
            "audio_tokens": in_audio,
            "image_tokens": 0,
            "cached_tokens": cached_text + cached_audio,
            "cached_tokens_details": {"text_tokens": cached_text, "audio_tokens": cached_audio, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio},
    }


@dataclass(frozen=True, slots=True)
class InputBlock:
    """One piece of a response's input as the token estimate counts it: the
    instructions, or one item.

    Attributes:
        key: what must be identical for the piece to count as cached (the
            text itself for instructions; the item id, its words and audio
            length for an item, so a truncated item is a new piece).
        text_tokens / audio_tokens: its tokens.
    """

    key: str
    text_tokens: int
    audio_tokens: int


def input_blocks(instructions: str, context: list[dict[str, Any]],
                 audio_ms: dict[str, float]) -> list[InputBlock]:
    """The input of a response, in order: its instructions, then each item
    of ``context`` (text by characters: message text and transcripts, function
    call arguments and outputs; user audio by duration: the item's
    ``_audio_ms`` or ``audio_ms[item id]``, in ms; the transcript of user
    audio is not counted again)."""
    blocks = [InputBlock("instructions\0" + instructions, text_tokens(instructions), 0)]
    for item in context:
        words = _counted_text(item)
        ms = item.get("_audio_ms", 0.0) if item.get("role") == "user" else 0.0
        ms += audio_ms.get(item.get("id", ""), 0.0)
        blocks.append(InputBlock(f"{item.get('id')}\0{ms}\0" + "\0".join(words),
                                 sum(text_tokens(w) for w in words), input_audio_tokens(ms) if ms else 0))
    return blocks


def _counted_text(item: dict[str, Any]) -> list[str]:
    """The texts of an item that count as input text tokens."""
    if item.get("type") == "function_call":
        return [item.get("arguments", "")]
    if item.get("type") == "function_call_output":
        return [item.get("output", "")]
    return [part.get("text") or part.get("transcript") or "" for part in item.get("content", [])
            if part.get("type") != "input_audio"]


def cached_tokens(previous: list[InputBlock], current: list[InputBlock]) -> tuple[int, int]:
    """``(text, audio)`` tokens of ``current`` that are cached: those of the
    longest prefix of pieces identical to the previous response's input, the
    way prompt caching reuses a repeated prefix (no minimum length).

    >>> a, b = InputBlock("i", 5, 0), InputBlock("u", 2, 10)
    >>> cached_tokens([a, b], [a, b, InputBlock("v", 3, 0)]), cached_tokens([b], [a, b])
    ((7, 10), (0, 0))
    """
    text = audio = 0
    for old, new in zip(previous, current, strict=False):
        if old != new:
            break
        text += new.text_tokens
        audio += new.audio_tokens
    return text, audio
