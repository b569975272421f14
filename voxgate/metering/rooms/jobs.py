"""The scheduled jobs' claims (``job_runs``, ``migrations/0008_jobs.sql``):
``JobRunsDB`` on the store's connection, used by ``voxgate.jobs`` (which
re-exports it). Times are Unix seconds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["JobRun", "JobRunsDB"]


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
