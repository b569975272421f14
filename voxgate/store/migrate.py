"""The schema's migration files and what is common to running them on
either database (``voxgate.store.dialects``: SQLite applies them statement by
statement under ``BEGIN IMMEDIATE``, PostgreSQL whole scripts under an
advisory lock of their own).

The files are ``migrations/NNNN_name.sql`` (SQLite) and
``migrations/postgresql/NNNN_name.sql`` (PostgreSQL), with the same version
numbers; each is applied in one transaction and recorded in
``schema_migrations`` with the SHA-256 of its text (``migration_checksum``),
verified at every open (``ChecksumMismatch``). See docs/database.md,
"Migrations".
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxgate.errors import ChecksumMismatch, MigrationError, PendingMigrations

__all__ = ["Migration", "MigrationError", "ChecksumMismatch", "PendingMigrations", "MIGRATIONS_DIR",
           "PG_MIGRATIONS_DIR", "load_migrations", "pending_migrations", "migration_checksum",
           "split_sql", "recorded_migrations", "record_migration", "SCHEMA_MIGRATIONS_SQL"]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
PG_MIGRATIONS_DIR = MIGRATIONS_DIR / "postgresql"

_MIGRATION_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One ``NNNN_name.sql`` file. ``checksum``: the SHA-256 (hex) of its
    text with line endings as LF, recorded in ``schema_migrations`` when it
    is applied and compared with the file at every start."""

    version: int
    name: str
    path: Path
    checksum: str = ""

    @property
    def label(self) -> str:
        """``"0012 (0012_housekeeping.sql)"``, as messages name it."""
        return f"{self.version:04d} ({self.path.name})"


def migration_checksum(text: bytes) -> str:
    """SHA-256 (hex) of a migration file's bytes, CRLF read as LF (so a
    checkout with Windows line endings is the same file)."""
    return hashlib.sha256(text.replace(b"\r\n", b"\n")).hexdigest()


def load_migrations(directory: str | Path) -> list[Migration]:
    """The ``NNNN_name.sql`` files of ``directory`` in version order.

    Raises:
        ValueError: two files share a version number.
    """
    found: dict[int, Migration] = {}
    for path in Path(directory).iterdir():
        m = _MIGRATION_NAME.match(path.name)
        if not m or not path.is_file():
            continue
        version = int(m.group(1))
        if version in found:
            raise ValueError(f"duplicate migration version {version}: "
                             f"{found[version].path.name}, {path.name}")
        found[version] = Migration(version, m.group(2), path,
                                   migration_checksum(path.read_bytes()))
    return [found[v] for v in sorted(found)]


def pending_migrations(migrations: Iterable[Migration],
                       applied: dict[int, str | None]) -> list[Migration]:
    """The migrations not applied yet, in version order, after checking
    that each applied one is still the file that was applied.

    Args:
        migrations: the files (``load_migrations``).
        applied: ``schema_migrations``: version → recorded checksum (None:
            recorded before checksums were kept; not checked).

    Raises:
        ChecksumMismatch: an applied migration's file changed since.
    """
    pending = []
    for migration in migrations:
        if migration.version not in applied:
            pending.append(migration)
            continue
        recorded = applied[migration.version]
        if recorded is not None and recorded != migration.checksum:
            raise ChecksumMismatch(migration, recorded)
    return pending


# schema_migrations: one row per applied migration; checksum NULL only for
# rows written before checksums were kept, until the first start that has them
SCHEMA_MIGRATIONS_SQL = ("CREATE TABLE IF NOT EXISTS schema_migrations (version {int} PRIMARY KEY,"
                      " name TEXT NOT NULL, applied_at {real} NOT NULL, checksum TEXT)")


def recorded_migrations(execute: Callable[..., Any],
                         migrations: Iterable[Migration]) -> dict[int, str | None]:
    """``schema_migrations`` as version → checksum, after recording the
    checksum of the files of the rows that have none (written before
    checksums were kept: the files are taken as they are now). Runs inside
    the caller's transaction (``execute`` is its connection's)."""
    files = {m.version: m for m in migrations}
    applied: dict[int, str | None] = {}
    for version, checksum in execute("SELECT version, checksum FROM schema_migrations").fetchall():
        if checksum is None and version in files:
            checksum = files[version].checksum
            execute("UPDATE schema_migrations SET checksum = ? WHERE version = ?"
                    " AND checksum IS NULL", (checksum, version))
        applied[int(version)] = checksum
    return applied


def record_migration(execute: Callable[..., Any], migration: Migration) -> None:
    execute("INSERT INTO schema_migrations (version, name, applied_at, checksum)"
            " VALUES (?, ?, ?, ?)", (migration.version, migration.name, time.time(),
                                     migration.checksum))


def split_sql(script: str) -> list[str]:
    """Split a SQL script into complete statements.

    Uses ``sqlite3.complete_statement``, so semicolons inside strings,
    comments and ``CREATE TRIGGER … BEGIN … END`` bodies are handled.
    Comment-only fragments are dropped.
    """
    statements: list[str] = []
    buf = ""
    for part in script.split(";"):
        buf += part + ";"
        if sqlite3.complete_statement(buf):
            if _has_code(buf):
                statements.append(buf.strip())
            buf = ""
    # the split adds a ";" after the last fragment; what remains is a
    # trailing fragment without a semicolon of its own
    rest = buf[:-1]
    if _has_code(rest):
        statements.append(rest.strip())
    return statements


def _has_code(sql: str) -> bool:
    """True if ``sql`` holds anything besides comments, whitespace and ``;``."""
    text = re.sub(r"--[^\n]*", "", sql)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return bool(text.replace(";", "").strip())
