"""``voxgate admin …``: accounts, projects, keys and usage, straight on the
store. Every command that changes something writes the audit log (actor
``cli:<user>``), like the dashboard's actions."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from decimal import Decimal, InvalidOperation
from typing import Any

from voxgate.config import load_settings
from voxgate.logs import cli_actor
from voxgate.models import Plan, PlanCatalog, load_catalog
from voxgate.models.margin import Margin
from voxgate.models.margin import usd_text as usd
from voxgate.models.origins import parse_models, parse_networks, parse_origins
from voxgate.proxy.api import usage_body
from voxgate.store import open_store
from voxgate.store.base import period_of
from voxgate.store.plans import account_plan
from voxgate.store.queries.margin import read_margin

__all__ = ["run_admin", "PIN_COMMANDS", "cli_actor", "resolve_plan"]

# command → (argument, the project field it sets, its parser)
PIN_COMMANDS = {
    "set-origins": ("origins", "allowed_origins", parse_origins),
    "set-models": ("models", "allowed_models", parse_models),
    "set-ips": ("networks", "allowed_ips", parse_networks),
}


def resolve_plan(catalog: PlanCatalog, plan_id: str) -> Plan:
    """The catalog's plan ``plan_id`` (a legacy id gives its successor).

    Raises:
        ValueError: unknown plan; the message lists the valid ones.
    """
    try:
        return catalog.get(plan_id)
    except KeyError:
        raise ValueError(f"unknown plan {plan_id!r}; valid plans: {', '.join(catalog.plans)}") from None


def _notice(text: str) -> None:
    """A message for the person at the terminal: stderr, so that stdout
    carries only the command's JSON."""
    print(text, file=sys.stderr)


async def run_admin(args: argparse.Namespace) -> int:
    """Run one ``voxgate admin`` command: its result as JSON on stdout,
    notices and errors on stderr. Returns the exit status (1: unknown id,
    2: invalid argument such as an unknown plan)."""
    settings = load_settings(args.config)
    if args.admin_command == "create-operator":
        from voxgate.web.cli import create_operator_command

        return await create_operator_command(args.config, args.email, args.password)
    catalog = load_catalog(settings.catalog)
    store = open_store(settings)
    await store.open()
    actor = cli_actor()

    async def audit(action: str, account_id: str | None, **detail: Any) -> None:
        await store.audit(actor, action, account_id, detail)

    try:
        cmd = args.admin_command
        if cmd == "create-account":
            plan = resolve_plan(catalog, args.plan or catalog.default_plan).id
            account = await store.create_account(args.email, plan, name=args.name)
            await audit("account.created", account.id, email=account.email, plan=plan)
            print(json.dumps({"id": account.id, "email": account.email, "plan": account.plan_id}))
        elif cmd == "create-project":
            if await store.get_account(args.account_id) is None:
                _notice(f"voxgate: no account {args.account_id}")
                return 1
            project = await store.create_project(args.account_id, args.name)
            await audit("project.created", project.account_id, project_id=project.id,
                        name=project.name)
            print(json.dumps({"id": project.id, "account_id": project.account_id,
                              "name": project.name}))
        elif cmd == "create-key":
            found_project = await store.get_project(args.project_id)
            if found_project is None:
                _notice(f"voxgate: no project {args.project_id}")
                return 1
            key, plaintext = await store.create_api_key(args.project_id, args.name)
            await audit("key.created", found_project.account_id, project_id=key.project_id,
                        key_id=key.id, prefix=key.prefix)
            print(json.dumps({"id": key.id, "prefix": key.prefix, "key": plaintext}))
            _notice("(the key is shown once: store it now)")
        elif cmd == "create-admin-key":
            if await store.get_account(args.account_id) is None:
                _notice(f"voxgate: no account {args.account_id}")
                return 1
            admin, plaintext = await store.create_admin_key(args.account_id, args.name)
            await audit("admin_key.created", admin.account_id, key_id=admin.id,
                        prefix=admin.prefix)
            print(json.dumps({"id": admin.id, "prefix": admin.prefix, "key": plaintext}))
            _notice("(the key is shown once: store it now)")
        elif cmd == "revoke-admin-key":
            await store.revoke_admin_key(args.key_id)
            await audit("admin_key.revoked", None, key_id=args.key_id)
            print(json.dumps({"id": args.key_id, "revoked": True}))
        elif cmd in PIN_COMMANDS:
            arg, field, parse = PIN_COMMANDS[cmd]
            values = parse(getattr(args, arg))
            project = await store.update_project(args.project_id, **{field: values})
            await audit("project.pins_set", project.account_id, project_id=project.id,
                        **{field: list(values)})
            print(json.dumps({"id": project.id, field: list(values)}))
        elif cmd == "revoke-key":
            await store.revoke_api_key(args.key_id)
            await audit("key.revoked", None, key_id=args.key_id)
            print(json.dumps({"id": args.key_id, "revoked": True}))
        elif cmd == "set-plan":
            plan = resolve_plan(catalog, args.plan).id
            account = await store.update_account(args.account_id, plan_id=plan)
            await audit("account.plan_set", account.id, plan=plan)
            print(json.dumps({"id": account.id, "plan": account.plan_id}))
        elif cmd == "usage":
            found = await store.get_account(args.account_id)
            if found is None:
                _notice(f"voxgate: no account {args.account_id}")
                return 1
            now = time.time()
            usage = await store.get_usage(found.id, period_of(now))
            effective = await account_plan(store, catalog, found, now)  # enterprise, packs
            packs = await store.pack_balance(found.id, usage.period, now)
            print(json.dumps(usage_body(effective, usage, catalog, packs), indent=2))
        elif cmd == "accounts":
            for account in await store.list_accounts():
                print(f"{account.id}\t{account.email}\t{account.plan_id}\t{account.status}")
        elif cmd == "margin":
            now = time.time()
            period = args.period or period_of(now)
            if not PERIOD_RE.match(period):
                raise ValueError(f"--period must be YYYY-MM, not {period!r}")
            margin = await read_margin(store, catalog, period, now)
            if args.json:
                print(json.dumps(margin.to_json(), indent=2))
            else:
                print(margin_table(margin))
        elif cmd == "set-spend-limit":
            limit = parse_spend_limit(args.usd)
            account = await store.update_account(args.account_id, spend_limit_usd=limit)
            await audit("account.spend_limit_set", account.id,
                        spend_limit_usd=None if limit is None else str(limit))
            print(json.dumps({"id": account.id, "spend_limit_usd":
                              None if limit is None else str(limit)}))
        return 0
    except ValueError as exc:
        _notice(f"voxgate: {exc}")
        return 2
    except KeyError as exc:
        _notice(f"voxgate: not found: {exc}")
        return 1
    finally:
        await store.close()


PERIOD_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def parse_spend_limit(text: str) -> Decimal | None:
    """``voxgate admin set-spend-limit``'s USD: a decimal ≥ 0 (cents at
    most), or ``none`` to fall back to the plan's.

    Raises:
        ValueError: anything else.
    """
    if text.strip().lower() in ("none", "null", ""):
        return None
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"spend limit must be USD like 25.00 or none, not {text!r}") from None
    if not value.is_finite() or value < 0 or value != value.quantize(Decimal("0.01")):
        raise ValueError(f"spend limit must be USD ≥ 0 with at most 2 decimals, not {text!r}")
    return value


def margin_table(margin: Margin) -> str:
    """The margin view as text columns: plans, then accounts (lowest margin first)."""
    head = f"{'':<34} {'billable':>8} {'free':>6} {'revenue':>10} {'cost':>12} {'margin':>12}"
    lines = [f"margin {margin.period}", head]
    for title, rows in (("plans", margin.plans), ("accounts", margin.accounts)):
        lines.append(f"-- {title}")
        for r in [*rows, *([margin.total] if title == "plans" else [])]:
            lines.append(f"{r.label[:34]:<34} {r.billable:>8} {r.non_billable:>6} "
                         f"{usd(r.revenue_usd):>10} {usd(r.cost_usd):>12} {usd(r.margin_usd):>12}")
    return "\n".join(lines)
