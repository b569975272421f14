"""Ids of the local provider's objects, OpenAI-style: pure, no I/O."""

from __future__ import annotations

import uuid

__all__ = ["new_id"]


def new_id(prefix: str) -> str:
    """An OpenAI-style id: ``prefix`` (``sess``, ``item``, ``resp``, ``call``)
    then ``_`` and 22 random hex digits, e.g. ``item_3f2a…``."""
    return f"{prefix}_{uuid.uuid4().hex[:22]}"
