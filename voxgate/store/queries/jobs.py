"""The scheduled jobs' SQL on the store's connection, used by
``voxgate.jobs`` (which re-exports these classes): ``JobRunsDB``, the
claims of runs (``job_runs``, ``migrations/0008_jobs.sql``), and
``HousekeepingDB``, what the housekeeping jobs prune, in bounded batches.
Times are Unix seconds."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

__all__ = ["JobRun", "JobRunsDB", "HousekeepingDB", "PRUNABLE"]


@dataclass(frozen=True, slots=True)
class JobRun:
    """A ``job_runs`` row. ``last_outcome``: ``ok`` or ``failed``."""

    name: str
    next_run_at: float = 0.0
    lease_owner: str | None = None
    lease_until: float = 0.0
    last_started_at: float | None = None
    last_finished_at: float | None = None
    last_outcome: str | None = None
    last_detail: str | None = None
    runs: int = 0


_RUN_COLS = ("name, next_run_at, lease_owner, lease_until, last_started_at, last_finished_at,"
             " last_outcome, last_detail, runs")


class JobRunsDB:
    """The ``job_runs`` table (``migrations/0008_jobs.sql``) on an open
    store (SQLite or PostgreSQL): writes inside ``store.transaction()``,
    reads direct."""

    def __init__(self, store: Any) -> None:
        self.store = store

    async def runs(self) -> dict[str, JobRun]:
        rows = await self.store.db.execute_fetchall(f"SELECT {_RUN_COLS} FROM job_runs")
        return {r[0]: JobRun(*r) for r in rows}

    async def claim(self, name: str, owner: str, now: float, lease_until: float) -> bool:
        """Take the run of ``name`` if it is due at ``now`` and no lease is
        held (one UPDATE in a write transaction, so of any number of callers
        in any process one wins); True for the winner."""
        async with self.store.transaction() as db:
            await db.execute("INSERT INTO job_runs (name) VALUES (?) ON CONFLICT DO NOTHING",
                             (name,))
            cur = await db.execute(
                "UPDATE job_runs SET lease_owner = ?, lease_until = ?, last_started_at = ?"
                " WHERE name = ? AND next_run_at <= ? AND lease_until <= ?",
                (owner, lease_until, now, name, now, now))
            return cur.rowcount == 1

    async def finish(self, name: str, owner: str, *, finished_at: float, ok: bool,
                     detail: str, next_at: float) -> bool:
        """Record the outcome and the next run and free the lease, if
        ``owner`` still holds it; False when it was taken over meanwhile."""
        async with self.store.transaction() as db:
            cur = await db.execute(
                "UPDATE job_runs SET lease_owner = NULL, lease_until = 0, last_finished_at = ?,"
                " last_outcome = ?, last_detail = ?, next_run_at = ?, runs = runs + 1"
                " WHERE name = ? AND lease_owner = ?",
                (finished_at, "ok" if ok else "failed", detail[:500], next_at, name, owner))
            return cur.rowcount == 1


# What the housekeeping jobs prune: one statement per kind of row, taking at
# most ``limit`` rows whose time is before the cutoff (oldest first), each
# the subject of an index (migrations/0012_housekeeping.sql). Parameters:
# (cutoff, limit).
PRUNABLE: dict[str, str] = {
    # expired ephemeral keys (no row refers to them: sessions keep the id only)
    "ephemeral_keys": (
        "DELETE FROM ephemeral_keys WHERE id IN (SELECT id FROM ephemeral_keys"
        " WHERE expires_at < ? ORDER BY expires_at LIMIT ?)"),
    # sent emails
    "email_outbox": (
        "DELETE FROM email_outbox WHERE id IN (SELECT id FROM email_outbox"
        " WHERE sent_at IS NOT NULL AND sent_at < ? ORDER BY sent_at LIMIT ?)"),
    # delivered customer webhooks
    "webhook_outbox": (
        "DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM webhook_outbox"
        " WHERE delivered_at IS NOT NULL AND delivered_at < ? ORDER BY delivered_at LIMIT ?)"),
    # processed Stripe events: the payload is emptied, the row kept (its id
    # makes a replay of the event a no-op)
    "stripe_events": (
        "UPDATE stripe_events SET payload = '' WHERE id IN (SELECT id FROM stripe_events"
        " WHERE processed_at < ? AND payload <> '' ORDER BY processed_at LIMIT ?)"),
}


class HousekeepingDB:
    """Pruning of rows nobody needs any more (``PRUNABLE``) on an open
    store (SQLite or PostgreSQL), for the housekeeping jobs of
    ``voxgate.jobs``."""

    def __init__(self, store: Any) -> None:
        self.store = store

    async def prune(self, kind: str, before: float, *, batch: int, max_batches: int) -> int:
        """Prune the rows of ``kind`` (a key of ``PRUNABLE``) whose time is
        before ``before`` (Unix s): ``batch`` rows per statement, each in a
        write transaction of its own, so a large backlog never holds the
        database for long; at most ``max_batches`` statements (the rest is
        left for the next run). Returns the number of rows pruned.

        Raises:
            KeyError: ``kind`` is not in ``PRUNABLE``.
        """
        sql = PRUNABLE[kind]
        pruned = 0
        for _ in range(max_batches):
            async with self.store.transaction() as db:
                cur = await db.execute(sql, (before, batch))
            pruned += max(cur.rowcount, 0)
            if cur.rowcount < batch:
                break
            await asyncio.sleep(0)  # let the session path in between batches
        return pruned
