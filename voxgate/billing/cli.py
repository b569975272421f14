"""``voxgate billing …`` commands.

- ``voxgate billing sync`` — the plan catalog → Stripe products, prices, meter.
- ``voxgate billing migrate-plans [--apply]`` — legacy plans → current ones
  (dry run unless ``--apply``; a notice email is queued per migrated account).
- ``voxgate billing settle`` — one settlement pass now (what the server's
  worker does every ``billing.settle_interval_s``).
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    billing = subparsers.add_parser("billing", help="Stripe billing: sync, plan migration")
    billing.add_argument("--config", help="TOML configuration file")
    bsub = billing.add_subparsers(dest="billing_command", required=True)
    sync = bsub.add_parser("sync", help="create or update Stripe products, prices and meter")
    sync.add_argument("--config", help=argparse.SUPPRESS, default=argparse.SUPPRESS)
    mig = bsub.add_parser("migrate-plans", help="move accounts off legacy plans (dry run)")
    mig.add_argument("--apply", action="store_true", help="change the accounts")
    mig.add_argument("--config", help=argparse.SUPPRESS, default=argparse.SUPPRESS)
    settle = bsub.add_parser("settle", help="run one settlement pass now")
    settle.add_argument("--config", help=argparse.SUPPRESS, default=argparse.SUPPRESS)
    billing.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from voxgate.cli import run_async

    return run_async(_main(args))


async def _main(args: argparse.Namespace) -> int:
    from voxgate.admin import cli_actor
    from voxgate.billing.service import BillingService
    from voxgate.config import load_settings
    from voxgate.models import load_catalog
    from voxgate.proxy.app import open_store

    settings = load_settings(getattr(args, "config", None))
    catalog = load_catalog(settings.catalog)
    cmd = args.billing_command
    if cmd == "sync":
        from voxgate.billing.catalog_sync import sync_catalog
        from voxgate.billing.stripe_api import BillingError, StripeApi

        api = StripeApi(settings.billing)
        try:
            lines = await sync_catalog(api, catalog, settings.billing)
            for line in lines:
                print(line)
        except BillingError as err:
            print(f"voxgate billing sync: {err.message}")
            return 1
        finally:
            await api.close()
        store = open_store(settings)
        await store.open()
        try:
            await store.audit(cli_actor(), "billing.synced", None, {"changes": lines})
        finally:
            await store.close()
        return 0
    store = open_store(settings)
    await store.open()
    svc = BillingService(settings, store, catalog)
    try:
        if cmd == "migrate-plans":
            from voxgate.billing.migrate import apply_migrations, plan_migrations

            migrations = plan_migrations(await store.list_accounts(), catalog)
            if not migrations:
                print("no account is on a legacy plan")
                return 0
            for m in migrations:
                print(("migrate " if args.apply else "would migrate ") + str(m))
            if args.apply:
                n = await apply_migrations(store, svc.db, svc.notifier, catalog, migrations,
                                           actor=cli_actor())
                print(f"migrated {n} account(s); notice emails queued")
            else:
                print(f"{len(migrations)} account(s); dry run: nothing changed (use --apply)")
            return 0
        if cmd == "settle":
            counts = await svc.settlement.run_once()
            await store.audit(cli_actor(), "billing.settled", None, dict(counts))
            print(f"settled {counts['settled']}, failed {counts['failed']}")
            return 0
    finally:
        await svc.api.close()
        await store.close()
    return 2
