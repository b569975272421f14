"""``AsyncConnection``: one DB-API connection (``sqlite3`` or psycopg)
driven from one thread of its own, for asyncio code.

Both stores run on it (``voxgate.metering.sqlite_store``,
``voxgate.metering.pg_store``): ``execute``/``execute_fetchall``/
``executemany`` for single statements (one thread hop each, rows read at
once), and ``run(fn, *args)`` to run ``fn(connection, *args)`` on the
thread, so a whole transaction of the hot paths costs one hop. The
connection is created on that thread (``connect()``) and, when it reports
itself ``broken`` (a dropped server connection), replaced at the next call.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["AsyncConnection", "Result"]


class Result:
    """A statement's outcome: ``rowcount`` and its rows (``fetchone()``,
    ``fetchall()``; empty for statements without a result)."""

    def __init__(self, rowcount: int, rows: list[Any]) -> None:
        self.rowcount = rowcount
        self._rows = rows

    async def fetchone(self) -> Any:
        return self._rows.pop(0) if self._rows else None

    async def fetchall(self) -> list[Any]:
        rows, self._rows = self._rows, []
        return rows


def _run(conn: Any, sql: str, params: Sequence[Any]) -> Result:
    cur = conn.execute(sql, params)
    return Result(cur.rowcount, cur.fetchall() if cur.description else [])


def _run_many(conn: Any, sql: str, seq: list[Sequence[Any]]) -> Result:
    return Result(conn.executemany(sql, seq).rowcount, [])


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class AsyncConnection:
    """A DB-API connection on a thread of its own (see the module docstring).

    Args:
        connect: makes the connection (called on the thread); the object has
            ``execute(sql, params)`` and ``executemany(sql, seq)`` returning
            cursors, ``close()``, and optionally a ``broken`` flag.
        name: the thread's name.
    """

    def __init__(self, connect: Callable[[], Any], name: str) -> None:
        self._connect = connect
        self._name = name
        self._conn: Any = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def open(self) -> None:
        """Start the thread and connect (raises what ``connect()`` raises)."""
        self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
        self._thread.start()
        try:
            await self._hop(lambda: None)
        except BaseException:
            self._queue.put(None)
            raise

    def _serve(self) -> None:
        while (item := self._queue.get()) is not None:
            loop, future, fn, args = item
            try:
                if self._conn is None or getattr(self._conn, "broken", False):
                    self._conn = self._connect()
                result, error = fn(*args), None
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the caller's event loop is closed: nobody waits
                pass
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _hop(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((loop, future, fn, args))
        return await future

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(connection, *args)`` on the connection's thread, in one hop."""
        return await self._hop(lambda: fn(self._conn, *args))

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        result: Result = await self.run(_run, sql, params)
        return result

    async def execute_fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return await (await self.execute(sql, params)).fetchall()

    async def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> Result:
        result: Result = await self.run(_run_many, sql, [tuple(p) for p in seq])
        return result

    async def close(self) -> None:
        """Close the connection and end the thread (waits for both)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
