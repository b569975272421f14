"""``voxgate billing …`` commands.

- ``voxgate billing sync`` — the plan catalog → Stripe products, prices, meter.
- ``voxgate billing migrate-plans [--apply]`` — legacy plans → current ones
  (dry run unless ``--apply``; a notice email is queued per migrated account).
- ``voxgate billing settle`` — one settlement pass now (what the server's
  worker does every ``billing.settle_interval_s``).
- ``voxgate billing grant-pack ACCOUNT (--pack ID | --sessions N)`` — give the
  account an add-on pack (free, 30 days); prints it as JSON.
- ``voxgate billing set-enterprise ACCOUNT [--sessions-included N] …`` — give
  the account its own enterprise plan (``--tier UP_TO:CENTS`` repeated for
  graduated overage prices, ``inf`` for the last; the caps
  ``--max-session-s SECONDS``, ``--model MODEL`` repeated,
  ``--spend-limit-usd USD``) and sync it to Stripe when Stripe is
  configured; prints the plan's terms as JSON.
- ``voxgate billing expire-packs`` — mark packs past their 30 days expired.

``sync`` also syncs every account's enterprise plan.
"""

from __future__ import annotations

import argparse
import json
import sys
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
    grant = bsub.add_parser("grant-pack", help="give an account an add-on pack (30 days)")
    grant.add_argument("account_id")
    which = grant.add_mutually_exclusive_group(required=True)
    which.add_argument("--pack", help="a pack of the catalog ([packs.<id>])")
    which.add_argument("--sessions", type=int, help="a pack of this many sessions")
    grant.add_argument("--config", help=argparse.SUPPRESS, default=argparse.SUPPRESS)
    ent = bsub.add_parser("set-enterprise", help="give an account its own enterprise plan")
    ent.add_argument("account_id")
    ent.add_argument("--name", default="Enterprise")
    for flag in ("--price-cents", "--sessions-included", "--overage-cents", "--concurrency",
                 "--requests-per-minute", "--projects"):
        ent.add_argument(flag, type=int)
    ent.add_argument("--tier", action="append", default=[], metavar="UP_TO:CENTS",
                     help="graduated price of the sessions beyond the included ones, "
                          "counted from the first charged one (repeat; UP_TO inf for the last)")
    ent.add_argument("--max-session-s", type=float, metavar="SECONDS",
                     help="longest session, seconds (> 0): at it the client gets a "
                          "session_expired error event and the session is closed")
    ent.add_argument("--model", action="append", default=[], dest="models", metavar="MODEL",
                     help="a model the account's sessions may use (repeat; none = any)")
    ent.add_argument("--spend-limit-usd", metavar="USD",
                     help="monthly provider-cost cap, USD ≥ 0 (a decimal: 250, 12.50)")
    ent.add_argument("--config", help=argparse.SUPPRESS, default=argparse.SUPPRESS)
    exp = bsub.add_parser("expire-packs", help="mark add-on packs past their 30 days expired")
    exp.add_argument("--config", help=argparse.SUPPRESS, default=argparse.SUPPRESS)
    billing.set_defaults(func=_run)


def enterprise_terms(args: argparse.Namespace) -> dict[str, Any]:
    """The enterprise plan terms of ``set-enterprise``'s arguments
    (``voxgate.models.enterprise``): the counts, ``tiers``, and the caps of
    issue 21 item 4: ``max_session_s`` (float seconds), ``models`` (model
    ids, in the order given), ``spend_limit_usd`` (a decimal string, as the
    terms store it). An option not given is left out (no cap).

    Raises:
        ValueError: a ``--tier`` that is not ``UP_TO:CENTS``, a
            ``--max-session-s`` not > 0, a ``--model`` that is blank, a
            ``--spend-limit-usd`` that is not USD ≥ 0.
    """
    from voxgate.models.enterprise import parse_tier
    from voxgate.models.plans import (
        parse_max_session_s,
        parse_plan_models,
        parse_spend_limit_usd,
    )

    terms: dict[str, Any] = {"name": args.name, "tiers": [parse_tier(t) for t in args.tier]}
    for name in ("price_cents", "sessions_included", "overage_cents", "concurrency",
                 "requests_per_minute", "projects"):
        if getattr(args, name) is not None:
            terms[name] = getattr(args, name)
    if args.max_session_s is not None:
        terms["max_session_s"] = parse_max_session_s(args.max_session_s)
    if args.models:
        terms["models"] = list(parse_plan_models(args.models))
    if args.spend_limit_usd is not None:
        terms["spend_limit_usd"] = str(parse_spend_limit_usd(args.spend_limit_usd.strip()))
    return terms


def _run(args: argparse.Namespace) -> int:
    from voxgate.aio import run_async

    return run_async(_main(args))


async def _main(args: argparse.Namespace) -> int:
    from voxgate.billing.service import BillingService
    from voxgate.config import load_settings
    from voxgate.logs import cli_actor
    from voxgate.models import load_catalog
    from voxgate.store import open_store

    settings = load_settings(getattr(args, "config", None))
    catalog = load_catalog(settings.catalog)
    cmd = args.billing_command
    if cmd == "sync":
        from voxgate.billing.catalog_sync import sync_catalog
        from voxgate.billing.stripe_api import BillingError

        store = open_store(settings)
        await store.open()
        svc = BillingService(settings, store, catalog)
        try:
            lines = await sync_catalog(svc.api, catalog, settings.billing,
                                       await svc.addons.enterprise_plans())
            for line in lines:
                print(line)
            await store.audit(cli_actor(), "billing.synced", None, {"changes": lines})
        except BillingError as err:
            print(f"voxgate billing sync: {err.message}")
            return 1
        finally:
            await svc.api.close()
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
        if cmd in ("grant-pack", "set-enterprise", "expire-packs"):
            return await _addons(args, svc)
        if cmd == "settle":
            counts = await svc.settlement.run_once()
            await store.audit(cli_actor(), "billing.settled", None, dict(counts))
            print(f"settled {counts['settled']}, failed {counts['failed']}")
            return 0
    finally:
        await svc.api.close()
        await store.close()
    return 2


async def _addons(args: argparse.Namespace, svc: Any) -> int:
    """``grant-pack``, ``set-enterprise``, ``expire-packs``: 1 for an unknown
    account, 2 for invalid arguments."""
    from voxgate.errors import InvalidRequest
    from voxgate.logs import cli_actor
    from voxgate.models.enterprise import plan_terms

    cmd = args.billing_command
    try:
        if cmd == "expire-packs":
            expired = await svc.addons.expire()
            print(json.dumps({"expired": [p.id for p in expired]}))
            return 0
        if cmd == "grant-pack":
            pack = await svc.addons.grant(args.account_id, cli_actor(), pack_id=args.pack,
                                          sessions=args.sessions)
            print(json.dumps({"id": pack.id, "account_id": pack.account_id,
                              "pack": pack.catalog_pack, "sessions": pack.sessions,
                              "expires_at": pack.expires_at}))
            return 0
        try:
            terms = enterprise_terms(args)
        except ValueError as exc:
            print(f"voxgate billing set-enterprise: {exc}", file=sys.stderr)
            return 2
        plan, report = await svc.set_enterprise_plan(args.account_id, terms, cli_actor())
        print(json.dumps({"account_id": args.account_id, "plan": plan.id, **plan_terms(plan)}))
        for line in report:
            print(line, file=sys.stderr)
        return 0
    except KeyError:
        print(f"no account {args.account_id}", file=sys.stderr)
        return 1
    except InvalidRequest as err:
        print(f"voxgate billing {cmd}: {err.message}", file=sys.stderr)
        return 2
