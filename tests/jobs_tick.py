"""One scheduler poll in its own process, for tests/test_jobs.py:

    python -m tests.jobs_tick DB CATALOG CLOCK START_AT OWNER

opens the SQLite database DB, waits until wall time START_AT (so that two
such processes poll at the same moment), runs ``Scheduler.tick`` once with
the clock fixed at CLOCK (Unix s), and prints the jobs it ran as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from voxgate.billing.db import BillingDB
from voxgate.billing.notify import Notifier
from voxgate.config import load_settings
from voxgate.jobs import JobContext, Scheduler
from voxgate.models import load_catalog
from voxgate.store.sql import SQLiteStore


async def main(db: str, catalog: str, clock: float, start_at: float, owner: str) -> None:
    settings = load_settings(None, database_url=f"sqlite:///{db}", catalog=catalog)
    async with SQLiteStore(db) as store:
        ctx = JobContext(store, settings, lambda: clock, Notifier(settings, BillingDB(store)),
                         load_catalog(catalog))
        scheduler = Scheduler(ctx, owner=owner)
        await asyncio.sleep(max(0.0, start_at - time.time()))
        print(json.dumps(await scheduler.tick()), flush=True)


if __name__ == "__main__":
    db_path, catalog_path, clock_s, start_s, name = sys.argv[1:6]
    asyncio.run(main(db_path, catalog_path, float(clock_s), float(start_s), name))
