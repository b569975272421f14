"""The ``Store``'s instances (the processes sharing the database):
registration under an epoch, heartbeats, checkpoints of live sessions,
sweeps of dead instances and the sessions they left: a part of
``voxgate.store.sql.SQLStore`` (its methods, the same on every dialect).
See docs/database.md, "Instances and recovery".
"""

from __future__ import annotations

from typing import Any

import orjson

from voxgate.models import Measurements, Verdict
from voxgate.store.base import Instance, Orphan
from voxgate.store.core import SQLCore
from voxgate.store.statements import (
    INSTANCE_COLS,
    SESSION_COLS,
    checkpoint_sync,
    complete_sync,
    orphans_sync,
    session_row,
)

__all__ = ["InstanceMethods"]


class InstanceMethods(SQLCore):
    """Instances, checkpoints and sweeps (``SQLStore``'s)."""

    async def register_instance(self, instance_id: str, host: str, pid: int,
                                now: float) -> tuple[int, list[Orphan]]:
        """Record this process as ``instance_id`` under a new epoch (Unix ms
        of ``now``, or the previous epoch + 1 if larger) and open sessions
        under it from now on; returns (epoch, the sessions still active
        under that id with their last checkpoints), not completed (see
        ``Store``)."""
        def register(conn: Any) -> tuple[int, list[Orphan]]:
            row = conn.execute("SELECT epoch FROM instances WHERE id = ?",
                               (instance_id,)).fetchone()
            epoch = max(int(now * 1000), (int(row[0]) + 1) if row else 1)
            conn.execute(
                f"INSERT INTO instances ({INSTANCE_COLS}) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid,"
                " started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,"
                " epoch = excluded.epoch",
                (instance_id, host, pid, now, now, epoch))
            return epoch, orphans_sync(conn, "s.instance_id = ?", (instance_id,))

        result: tuple[int, list[Orphan]] = await self.transact(register)
        self.instance_id = instance_id
        return result

    async def heartbeat(self, instance_id: str, epoch: int, now: float) -> bool:
        """Refresh the heartbeat of the instance's row of ``epoch`` (one
        UPDATE); False when there is none: declared dead, never re-created."""
        return await self._write("UPDATE instances SET heartbeat_at = ? WHERE id = ? AND epoch = ?",
                                 (now, instance_id, epoch)) > 0

    async def checkpoint_sessions(self, instance_id: str,
                                  sessions: list[tuple[str, Measurements]], now: float) -> int:
        """Write the live sessions' measurements as of ``now`` (one
        executemany in one transaction; see ``Store``); how many rows."""
        if not sessions:
            return 0
        rows = [(orjson.dumps(m.to_dict()).decode(), m.connect_ms, m.duration_ms, m.audio_in_ms,
                 m.audio_out_ms, m.bytes_in, m.bytes_out, now, session_id, instance_id)
                for session_id, m in sorted(sessions, key=lambda s: s[0])]  # one lock order
        async with self.lock:
            count: int = await self._in_thread(checkpoint_sync, rows)
        return count

    async def unregister_instance(self, instance_id: str, epoch: int | None = None) -> None:
        if epoch is None:
            await self._write("DELETE FROM instances WHERE id = ?", (instance_id,))
        else:
            await self._write("DELETE FROM instances WHERE id = ? AND epoch = ?",
                              (instance_id, epoch))
        if self.instance_id == instance_id:
            self.instance_id = None

    async def list_instances(self) -> list[Instance]:
        """Every registered instance, oldest start first."""
        rows = await self.db.execute_fetchall(
            f"SELECT {INSTANCE_COLS} FROM instances ORDER BY started_at, id")
        return [Instance(*r) for r in rows]

    async def expired_instances(self, heartbeat_before: float) -> list[Instance]:
        rows = await self.db.execute_fetchall(
            f"SELECT {INSTANCE_COLS} FROM instances WHERE heartbeat_at < ?"
            " ORDER BY heartbeat_at, id", (heartbeat_before,))
        return [Instance(*r) for r in rows]

    async def sweep_instance(self, instance_id: str, epoch: int, now: float, *,
                             heartbeat_before: float) -> list[Orphan]:
        """Delete a dead instance's row of ``epoch`` if its heartbeat is
        still older than ``heartbeat_before`` and return its active
        sessions with their checkpoints, in one transaction (see ``Store``)."""
        def sweep(conn: Any) -> list[Orphan]:
            gone = conn.execute(
                "DELETE FROM instances WHERE id = ? AND epoch = ? AND heartbeat_at < ?",
                (instance_id, epoch, heartbeat_before)).rowcount
            return orphans_sync(conn, "s.instance_id = ?", (instance_id,)) if gone else []

        result: list[Orphan] = await self.transact(sweep)
        return result

    async def orphaned_sessions(self, before: float) -> list[Orphan]:
        """Active sessions of an instance with no row whose last sign of
        life is older than ``before`` (see ``Store``)."""
        where = ("s.instance_id IS NOT NULL AND COALESCE(s.checkpoint_at, s.started_at) < ?"
                 " AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = s.instance_id)")
        async with self.lock:
            result: list[Orphan] = await self._in_thread(orphans_sync, where, (before,))
        return result

    async def abandon_active_sessions(self, verdict: Verdict, now: float,
                                      started_before: float | None = None) -> int:
        """Complete every ``active`` session (left by a process that died)
        with ``verdict``'s reason and rule, ending at ``now``; with
        ``started_before`` (Unix s) only those started before it. They are
        recorded and counted as not billable whatever ``verdict.billable``
        says: nothing was measured to justify a charge. Returns how many
        (0 for sessions another process completed meanwhile: one
        transaction)."""
        not_billable = Verdict(False, verdict.reason, verdict.rule)
        where = "status = 'active'" + ("" if started_before is None else " AND started_at < ?")
        params: tuple[Any, ...] = () if started_before is None else (started_before,)

        def abandon(conn: Any) -> int:
            rows = conn.execute(
                f"SELECT {SESSION_COLS} FROM sessions WHERE {where}", params).fetchall()
            for row in rows:
                complete_sync(conn, session_row(row), not_billable, False, now)
            return len(rows)

        count: int = await self.transact(abandon)
        return count
