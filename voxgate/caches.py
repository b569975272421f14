"""``BoundedDict``: a dict with a cap on its size, for the in-memory maps a
long-running process fills per key (API keys seen, accounts' usage), so
that memory stays flat however many keys pass through it.

It evicts the least recently used entry (a hit through ``get``,
``setdefault`` or an assignment counts as a use) when an insertion goes past
``maxsize``. Only for caches whose entries can be read again from their
source: an evicted entry is simply fetched again.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, TypeVar

__all__ = ["BoundedDict"]

K = TypeVar("K")
V = TypeVar("V")
_MISSING: Any = object()


class BoundedDict(OrderedDict[K, V]):
    """An ``OrderedDict`` of at most ``maxsize`` entries, least recently
    used first.

    Raises:
        ValueError: ``maxsize`` is less than 1.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, not {maxsize}")
        super().__init__()
        self.maxsize = maxsize

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.maxsize:
            self.popitem(last=False)

    def get(self, key: K, default: Any = None, /) -> Any:  # type: ignore[override]
        value = super().get(key, _MISSING)
        if value is _MISSING:
            return default
        self.move_to_end(key)
        return value

    def setdefault(self, key: K, default: V = None, /) -> V:  # type: ignore[assignment]
        value = super().get(key, _MISSING)
        if value is _MISSING:
            self[key] = default
            return default
        self.move_to_end(key)
        return value  # type: ignore[no-any-return]
