"""The dashboard's tables: ``WebDB`` and its records, kept with the store's
other queries in ``voxgate.store.queries.web`` (re-exported here)."""

from voxgate.store.queries.web import (
    CHALLENGE_ATTEMPTS,
    CHALLENGE_TTL_S,
    SESSION_TTL_S,
    AuditEntry,
    Challenge,
    DayRow,
    PlanChange,
    User,
    WebDB,
)

__all__ = ["User", "WebDB", "PlanChange", "DayRow", "AuditEntry", "Challenge", "SESSION_TTL_S",
           "CHALLENGE_TTL_S", "CHALLENGE_ATTEMPTS"]
