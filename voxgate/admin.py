"""``voxgate admin …``: accounts, projects, keys and usage, straight on the store."""

from __future__ import annotations

import argparse
import json

from voxgate.config import load_settings
from voxgate.metering.store import period_of
from voxgate.models import load_catalog
from voxgate.models.origins import parse_origins
from voxgate.proxy.api import usage_body
from voxgate.proxy.app import open_store

__all__ = ["run_admin"]


async def run_admin(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if args.admin_command == "create-operator":
        from voxgate.web.cli import create_operator_command

        return await create_operator_command(args.config, args.email, args.password)
    catalog = load_catalog(settings.catalog)
    store = open_store(settings)
    await store.open()
    try:
        cmd = args.admin_command
        if cmd == "create-account":
            plan = args.plan or catalog.default_plan
            catalog.get(plan)
            account = await store.create_account(args.email, plan, name=args.name)
            print(json.dumps({"id": account.id, "email": account.email, "plan": account.plan_id}))
        elif cmd == "create-project":
            if await store.get_account(args.account_id) is None:
                print(f"no account {args.account_id}")
                return 1
            project = await store.create_project(args.account_id, args.name)
            print(json.dumps({"id": project.id, "account_id": project.account_id,
                              "name": project.name}))
        elif cmd == "create-key":
            if await store.get_project(args.project_id) is None:
                print(f"no project {args.project_id}")
                return 1
            key, plaintext = await store.create_api_key(args.project_id, args.name)
            print(json.dumps({"id": key.id, "prefix": key.prefix, "key": plaintext}))
            print("(the key is shown once: store it now)")
        elif cmd == "set-origins":
            try:
                origins = parse_origins(args.origins)
            except ValueError as exc:
                print(f"voxgate: {exc}")
                return 2
            project = await store.set_allowed_origins(args.project_id, origins)
            print(json.dumps({"id": project.id, "allowed_origins": list(project.allowed_origins)}))
        elif cmd == "revoke-key":
            await store.revoke_api_key(args.key_id)
            print(f"revoked {args.key_id}")
        elif cmd == "set-plan":
            catalog.get(args.plan)
            account = await store.update_account(args.account_id, plan_id=args.plan)
            print(json.dumps({"id": account.id, "plan": account.plan_id}))
        elif cmd == "usage":
            account = await store.get_account(args.account_id)
            if account is None:
                print(f"no account {args.account_id}")
                return 1
            usage = await store.get_usage(account.id, period_of())
            print(json.dumps(usage_body(catalog.get(account.plan_id), usage, catalog), indent=2))
        elif cmd == "accounts":
            for account in await store.list_accounts():
                print(f"{account.id}\t{account.email}\t{account.plan_id}\t{account.status}")
        return 0
    except KeyError as exc:
        print(f"unknown: {exc}")
        return 1
    finally:
        await store.close()
