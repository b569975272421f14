"""The store: everything voxgate keeps in its database, and the only place
its SQL lives.

- ``base``: the ``Store`` protocol and its records (``MonthlyUsage``,
  ``SessionFilter``, ``OutboxItem``, ``Instance``, ``Orphan``, ``period_of``).
- ``sql``: ``SQLStore``, the one SQL store, holding a dialect object
  (``dialects.sqlite``, ``dialects.postgresql``); ``SQLiteStore(path)`` and
  ``PostgresStore(url, …)`` build one. Its parts: ``accounts``,
  ``instances``, ``statements`` (rows and the session path), ``migrate``
  (the migration runner).
- ``connection``: connections on threads of their own, the PostgreSQL pool
  in lanes; database errors translated into ``ServiceUnavailable`` there.
- ``queries``: the SQL of billing, the dashboard and the jobs.
- ``plans``: an account's effective plan read through the store.
- ``migrations/``: the schema, ``NNNN_name.sql`` (``postgresql/`` for
  PostgreSQL's).

``open_store(settings)`` builds the store the settings name.
"""

from __future__ import annotations

from voxgate.config import Settings
from voxgate.errors import ConfigError
from voxgate.store.base import Store

__all__ = ["Store", "open_store"]


def open_store(settings: Settings) -> Store:
    """The store the settings name (not yet open): SQLite by default
    (``sqlite:///path``), PostgreSQL for ``postgresql://…``
    (``voxgate.store.dialects.postgresql``).

    Raises:
        ConfigError: a ``database_url`` of another kind.
    """
    from voxgate.store.dialects.postgresql import is_postgres_url, lane_limits
    from voxgate.store.sql import PostgresStore, SQLiteStore

    url = settings.database_url
    if is_postgres_url(url):
        pg = PostgresStore(url, lanes=lane_limits(settings.database),
                           acquire_timeout_s=settings.database.acquire_timeout_s)
        pg.auto_migrate = settings.auto_migrate  # else a start with pending ones is refused
        return pg
    if url and not url.startswith("sqlite:///"):
        raise ConfigError(f"unsupported database_url {url.split('://')[0]}://…: "
                          "use sqlite:///path or postgresql://user@host:port/dbname")
    store = SQLiteStore(settings.sqlite_path)
    store.auto_migrate = settings.auto_migrate
    return store
