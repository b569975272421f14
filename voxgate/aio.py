"""Running voxgate's coroutines from a command: ``run_async`` (uvloop when
installed, else asyncio's own loop).

A low module with no voxgate imports, so that every command-line entry
(``voxgate.cli``, ``voxgate.web.cli``, ``voxgate.billing.cli``,
``voxgate.loadtest.cli``) can use it without importing the top-level
``voxgate.cli``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run_async"]

T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a new event loop (``uvloop.run`` when
    uvloop is installed, else ``asyncio.run``) and return its result.

    Raises:
        whatever ``coro`` raises.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
