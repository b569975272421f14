"""The store's per-room queries: every SQL statement of voxgate outside
the store's own (``voxgate.store.sql.SQLStore``) lives here, on the store's
connection (SQLite or PostgreSQL, see ``voxgate.store.dialects``), written
in portable SQL.

- ``billing``: ``BillingDB``, billing's tables (Stripe events, audit log,
  outboxes, invoice settlements, quota alerts).
- ``web``: ``WebDB``, the dashboard's tables (users, cookie sessions,
  two-factor, plan history, aggregates).
- ``jobs``: ``JobRunsDB``, the scheduled jobs' claims; ``HousekeepingDB``,
  the housekeeping jobs' pruning (``PRUNABLE``).

Billing, web and jobs import these classes (``voxgate.billing.db`` and
``voxgate.web.db`` re-export them) and call their methods; they run no SQL
of their own.
"""
