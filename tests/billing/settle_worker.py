"""One settlement worker in its own process, for
tests/billing/test_settlement_workers.py:

    python -m tests.billing.settle_worker DB SCHEMA CATALOG MODE API_BASE LEASE_S BATCH DEADLINE_S

opens the store (DB a SQLite file, or a ``postgresql://`` URL with SCHEMA;
SCHEMA ``-`` for none), prints ``ready``, waits for a line on stdin (so that
two workers start draining at the same moment), then runs
``SettlementWorker.run_once`` (MODE ``meter_events`` or ``invoice_items``,
Stripe at API_BASE, claims leased for LEASE_S seconds, at most BATCH outbox
items claimed per pass) every 50 ms until the settlement outbox is empty, and
prints the sessions it settled and the passes that raised (logged, then
carried on, as the service's loop does) as JSON. Exits 1 when the outbox is
not empty after DEADLINE_S seconds.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
import time

from voxgate.billing.db import BillingDB
from voxgate.billing.settlement import SettlementWorker
from voxgate.billing.stripe_api import StripeApi
from voxgate.config import BillingSettings
from voxgate.models import load_catalog
from voxgate.store.sql import PostgresStore, SQLiteStore


def open_store(db: str, schema: str):
    if db.startswith("postgresql://"):
        return PostgresStore(db, schema=None if schema == "-" else schema)
    return SQLiteStore(db)


async def main(db: str, schema: str, catalog: str, mode: str, api_base: str, lease_s: float,
               batch: int, deadline_s: float) -> int:
    settings = BillingSettings(stripe_secret_key="sk_test_voxgate", api_base=api_base,
                               settlement_mode=mode, claim_lease_s=lease_s,
                               retry_base_s=0.1, retry_max_s=0.5)
    store = open_store(db, schema)
    await store.open()
    # small batches, so that a worker killed mid-batch holds claims it never sent
    store.claim_outbox = functools.partial(store.claim_outbox, limit=batch)
    api = StripeApi(settings)
    worker = SettlementWorker(settings, store, BillingDB(store), api, load_catalog(catalog))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    deadline = time.monotonic() + deadline_s
    settled = failed_passes = 0
    try:
        while await store.due_outbox(time.time() + 1e9, limit=1):
            if time.monotonic() > deadline:
                return 1
            try:
                settled += (await worker.run_once())["settled"]
            except Exception:  # noqa: BLE001 - as the service's loop: log, next pass
                logging.exception("settlement pass failed")
                failed_passes += 1
            await asyncio.sleep(0.05)
    finally:
        await api.close()
        await store.close()
    print(json.dumps({"settled": settled, "failed_passes": failed_passes}), flush=True)
    return 0


if __name__ == "__main__":
    db_url, db_schema, catalog_path, settle_mode, base, lease, size, limit_s = sys.argv[1:9]
    sys.exit(asyncio.run(main(db_url, db_schema, catalog_path, settle_mode, base, float(lease),
                              int(size), float(limit_s))))
