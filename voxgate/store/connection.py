"""``AsyncConnection``: one DB-API connection (``sqlite3`` or psycopg)
driven from one thread of its own, for asyncio code; ``Pool``: several of
them in lanes, for PostgreSQL.

Both dialects of the store run on it (``voxgate.store.dialects.sqlite``,
``voxgate.store.dialects.postgresql``): ``execute``/``execute_fetchall``/
``executemany`` for single statements (one thread hop each, rows read at
once), and ``run(fn, *args)`` to run ``fn(connection, *args)`` on the
thread, so a whole transaction of the hot paths costs one hop. The
connection is created on that thread (``connect()``) and, when it reports
itself ``broken`` (a dropped server connection), replaced at the next call.

SQLite uses one ``AsyncConnection`` (one writer). PostgreSQL uses a ``Pool``
of them, in lanes, so that nothing can starve the heartbeats:

- ``"session"`` (the default): the session hot path (admission, session
  rows, completion), API reads;
- ``"heartbeat"``: instance heartbeats and checkpoints (one connection of
  its own, short timeouts);
- ``"background"``: jobs, dashboard, settlement, and every multi-statement
  ``store.transaction()`` of the rooms.

The lane is the ``LANE`` context variable (``with lane("heartbeat"): …``).
Outside a transaction each call takes an idle connection of the current
lane (waiting for one when all are busy, up to ``acquire_timeout_s``) and
gives it back when the database has answered; inside ``Pool.pinned(conn)``
(what ``store.transaction()`` uses) every call of that task goes to the
pinned connection.

Why connections on threads rather than psycopg_pool's
``AsyncConnectionPool`` with async psycopg: the store's transactions are
plain DB-API functions (``fn(conn, …)``) shared by SQLite and PostgreSQL
and run in one thread hop each; an async pool would need every one of them
written twice (sync for sqlite3, async for psycopg) and adds asyncio
overhead per statement on the hot path. A thread per connection costs one
idle thread and no CPU.

Errors: a database that is unreachable, busy or too slow — psycopg's
``OperationalError``/``InterfaceError`` (a dropped connection, a
``lock_timeout``/``statement_timeout``, a deadlock), sqlite3's "database is
locked"/I/O errors, no free connection within ``acquire_timeout_s`` — is
raised as ``voxgate.errors.ServiceUnavailable`` (503, ``dependency_error``)
with the original as ``__cause__``. Other errors (constraint violations,
SQL errors) are raised as the driver raised them.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import sqlite3
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from voxgate.errors import ServiceUnavailable

__all__ = ["AsyncConnection", "Result", "Pool", "LaneLimits", "Database", "LANE", "LANES",
           "lane", "unavailable", "rollback_open"]

LANES = ("session", "heartbeat", "background")
# The lane the current task's statements run on (PostgreSQL's pool; SQLite
# has one connection and ignores it).
LANE: contextvars.ContextVar[str] = contextvars.ContextVar("voxgate_db_lane", default="session")
# (task, connection) of the transaction the current task holds (Pool.pinned)
_PINNED: contextvars.ContextVar[tuple[Any, AsyncConnection] | None] = contextvars.ContextVar(
    "voxgate_db_pinned", default=None)

_SQLITE_UNAVAILABLE = ("locked", "busy", "disk i/o", "unable to open", "disk is full",
                       "readonly", "database or disk")


@contextmanager
def lane(name: str) -> Iterator[None]:
    """Run the statements of the ``with`` block on lane ``name``
    (``"session"``, ``"heartbeat"``, ``"background"``).

    Raises:
        ValueError: an unknown lane.
    """
    if name not in LANES:
        raise ValueError(f"unknown database lane {name!r}: one of {', '.join(LANES)}")
    token = LANE.set(name)
    try:
        yield
    finally:
        LANE.reset(token)


def unavailable(exc: BaseException) -> ServiceUnavailable | None:
    """The ``ServiceUnavailable`` to raise for a driver error that says the
    database is down, busy or too slow (see the module docstring), else None."""
    if isinstance(exc, ServiceUnavailable):
        return exc
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return ServiceUnavailable("the database is unavailable or busy; retry shortly")
    if isinstance(exc, sqlite3.OperationalError) and any(
            word in str(exc).lower() for word in _SQLITE_UNAVAILABLE):
        return ServiceUnavailable("the database is unavailable or busy; retry shortly")
    return None


def rollback_open(conn: Any) -> None:
    """ROLLBACK if ``conn`` (sqlite3, or the PostgreSQL dialect's PgConnection) is inside a
    transaction; errors are swallowed (a broken connection is replaced at
    its next use). Run on the connection's thread after a transaction whose
    caller gave up (an error, a cancellation while waiting for BEGIN)."""
    try:
        if conn is not None and getattr(conn, "in_transaction", False):
            conn.execute("ROLLBACK")
    except Exception:  # noqa: BLE001 - nothing to hand it to; the connection is reset
        pass


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


class Database(Protocol):
    """What ``store.db`` is: an ``AsyncConnection`` (SQLite) or a ``Pool``
    (PostgreSQL)."""

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any: ...
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> Result: ...
    async def execute_fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]: ...
    async def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> Result: ...


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


async def _answer(future: asyncio.Future[Any]) -> Any:
    """The future's result, driver errors translated (``unavailable``)."""
    try:
        return await future
    except Exception as exc:
        translated = unavailable(exc)
        if translated is None or translated is exc:
            raise
        raise translated from exc


class _Statements:
    """``execute``/``execute_fetchall``/``executemany`` (single statements,
    rows read at once) on top of the subclass's ``run(fn, *args)``."""

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        result: Result = await self.run(_run, sql, params)
        return result

    async def execute_fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return await (await self.execute(sql, params)).fetchall()

    async def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> Result:
        result: Result = await self.run(_run_many, sql, [tuple(p) for p in seq])
        return result


class AsyncConnection(_Statements):
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
        """Start the thread and connect (raises what ``connect()`` raises,
        translated as the module docstring says)."""
        self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
        self._thread.start()
        try:
            await _answer(self.submit(lambda: None))
        except BaseException:
            self._queue.put(None)
            self._thread = None
            raise

    def _serve(self) -> None:
        while (item := self._queue.get()) is not None:
            loop, future, fn, args = item
            try:
                if self._conn is None or getattr(self._conn, "broken", False):
                    if self._conn is not None:
                        try:
                            self._conn.close()
                        except Exception:  # noqa: BLE001 - it is being replaced
                            pass
                        self._conn = None
                    self._conn = self._connect()
                result, error = fn(*args), None
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the caller's event loop is closed: nobody waits
                pass
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            self._conn = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Queue ``fn(*args)`` for the thread; the future gets its outcome.
        Work runs in submission order, whether or not anyone awaits it (so
        a ROLLBACK submitted after a cancelled BEGIN runs after it)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((loop, future, fn, args))
        return future

    def submit_on(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """``submit`` of ``fn(connection, *args)``."""
        return self.submit(lambda: fn(self._conn, *args))

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(connection, *args)`` on the connection's thread, in one hop."""
        return await _answer(self.submit_on(fn, *args))

    def rollback_later(self) -> asyncio.Future[Any]:
        """Submit ``rollback_open`` without waiting for it (see ``submit``)."""
        return self.submit_on(rollback_open)

    async def close(self) -> None:
        """Close the connection and end the thread (waits for both)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, thread.join)


@dataclass(frozen=True, slots=True)
class LaneLimits:
    """One lane of a ``Pool``: at most ``connections`` connections, each
    with PostgreSQL's ``lock_timeout`` and ``statement_timeout`` (s) set, so
    a stalled lock or query cannot hold one forever (a 503 and a retry
    instead)."""

    connections: int
    lock_timeout_s: float
    statement_timeout_s: float


# The pool's defaults, as Settings.database's (which overrides them).
DEFAULT_LANES: dict[str, LaneLimits] = {
    "session": LaneLimits(4, 5.0, 15.0),
    "heartbeat": LaneLimits(1, 2.0, 2.0),
    "background": LaneLimits(2, 5.0, 60.0),
}


class _Lane:
    __slots__ = ("limits", "idle", "count", "waiters", "all")

    def __init__(self, limits: LaneLimits) -> None:
        self.limits = limits
        self.idle: list[AsyncConnection] = []
        self.count = 0
        self.waiters: deque[asyncio.Future[AsyncConnection]] = deque()
        self.all: list[AsyncConnection] = []


class Pool(_Statements):
    """Connections in lanes (see the module docstring); ``store.db`` on
    PostgreSQL. Connections are made on first need, up to each lane's
    ``connections``, and kept.

    Args:
        connect: ``connect(lane_name, limits)`` makes one connection (on its
            thread), as ``AsyncConnection``'s ``connect``.
        lanes: the limits of each lane (``LANES``).
        name: the threads' name prefix.
        acquire_timeout_s: how long a call waits for a free connection of
            its lane before ``ServiceUnavailable``.
    """

    def __init__(self, connect: Callable[[str, LaneLimits], Any], lanes: dict[str, LaneLimits],
                 name: str, acquire_timeout_s: float = 10.0) -> None:
        self._connect = connect
        self._lanes = {n: _Lane(lanes.get(n, DEFAULT_LANES[n])) for n in LANES}
        self._name = name
        self.acquire_timeout_s = acquire_timeout_s
        self._closed = False

    async def open(self) -> None:
        """Make the first session connection (raises ``ServiceUnavailable``
        when the server is unreachable)."""
        self._closed = False
        self.release("session", await self.acquire("session"))

    def sizes(self) -> dict[str, int]:
        """Lane → connections made so far."""
        return {n: len(lane_.all) for n, lane_ in self._lanes.items()}

    async def acquire(self, name: str) -> AsyncConnection:
        """An idle connection of lane ``name`` (a new one while the lane has
        room; else the next one released, up to ``acquire_timeout_s``).

        Raises:
            ServiceUnavailable: none free in time; the server unreachable.
        """
        if self._closed:
            raise RuntimeError("store is closed")
        slot = self._lanes[name]
        if slot.idle:
            return slot.idle.pop()
        if slot.count < slot.limits.connections:
            slot.count += 1
            conn = AsyncConnection(lambda: self._connect(name, slot.limits),
                                   f"{self._name}-{name}-{slot.count}")
            try:
                await conn.open()
            except BaseException:
                slot.count -= 1
                raise
            slot.all.append(conn)
            return conn
        waiter: asyncio.Future[AsyncConnection] = asyncio.get_running_loop().create_future()
        slot.waiters.append(waiter)
        try:
            async with asyncio.timeout(self.acquire_timeout_s):
                return await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release(name, waiter.result())  # handed over as we gave up
            else:
                waiter.cancel()
            if isinstance(exc, TimeoutError):
                raise ServiceUnavailable("the database is busy; retry shortly") from exc
            raise

    def release(self, name: str, conn: AsyncConnection) -> None:
        """Give ``conn`` back to lane ``name`` (to its first waiter if any)."""
        slot = self._lanes[name]
        while slot.waiters:
            waiter = slot.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        slot.idle.append(conn)

    def release_after(self, name: str, conn: AsyncConnection, last: asyncio.Future[Any]) -> None:
        """Give ``conn`` back once ``last`` (its last submitted work) is done,
        so no one else queues behind work that is still running."""
        def done(future: asyncio.Future[Any]) -> None:
            if not future.cancelled():
                future.exception()  # retrieved: the caller saw it, or gave up
            self.release(name, conn)

        last.add_done_callback(done)

    @contextmanager
    def pinned(self, conn: AsyncConnection) -> Iterator[None]:
        """Inside the block, this task's calls go to ``conn`` (a transaction)."""
        token = _PINNED.set((asyncio.current_task(), conn))
        try:
            yield
        finally:
            _PINNED.reset(token)

    @staticmethod
    def pinned_connection() -> AsyncConnection | None:
        """The connection the current task's transaction holds, if any."""
        pinned = _PINNED.get()
        if pinned is not None and pinned[0] is asyncio.current_task():
            return pinned[1]
        return None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(connection, *args)`` on a connection of the current lane (the
        pinned one inside a transaction), in one hop."""
        pinned = self.pinned_connection()
        if pinned is not None:
            return await pinned.run(fn, *args)
        name = LANE.get()
        conn = await self.acquire(name)
        try:
            future = conn.submit_on(fn, *args)
        except BaseException:
            self.release(name, conn)
            raise
        self.release_after(name, conn, future)
        # shielded: a cancelled caller leaves the work to finish on the
        # thread, and the connection comes back when it has
        return await _answer(asyncio.shield(future))

    async def close(self) -> None:
        """Close every connection (waits for their threads)."""
        self._closed = True
        for slot in self._lanes.values():
            conns, slot.all, slot.idle, slot.count = slot.all, [], [], 0
            for waiter in slot.waiters:
                if not waiter.done():
                    waiter.set_exception(ServiceUnavailable("the store is closing"))
            slot.waiters.clear()
            for conn in conns:
                await conn.close()
