"""``voxgate billing migrate-plans`` (dry run, then ``--apply``) and
``voxgate billing sync`` through the real command line."""

from __future__ import annotations

import asyncio

from tests.billing.conftest import SECRET_KEY
from voxgate.billing.migrate import plan_migrations
from voxgate.cli import main
from voxgate.models import Account, load_catalog
from voxgate.store.sql import SQLiteStore


def test_plan_migrations_pure():
    catalog = load_catalog()
    accounts = [Account(f"a{i}", f"{p}@x", p, 0.0) for i, p in
                enumerate(["build", "pro", "agency", "starter", "mystery"])]
    assert [(m.account_id, m.old_plan, m.new_plan) for m in plan_migrations(accounts, catalog)] \
        == [("a0", "build", "starter"), ("a1", "pro", "growth"), ("a2", "agency", "growth")]


def _config(tmp_path, **billing) -> str:
    lines = [f'data_dir = "{tmp_path / "data"}"', "[billing]"]
    lines += [f'{k} = "{v}"' for k, v in billing.items()]
    path = tmp_path / "voxgate.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


async def _seed(db_path) -> dict[str, str]:
    async with SQLiteStore(db_path) as store:
        ids = {}
        for plan in ("build", "pro", "agency", "free", "growth"):
            ids[plan] = (await store.create_account(f"{plan}@example.com", plan)).id
        return ids


async def _plans(db_path) -> dict[str, str]:
    async with SQLiteStore(db_path) as store:
        return {a.email.split("@")[0]: a.plan_id for a in await store.list_accounts()}


async def _emails(db_path) -> list[tuple[str, str]]:
    async with SQLiteStore(db_path) as store:
        rows = await store.db.execute_fetchall(
            "SELECT to_addr, kind FROM email_outbox ORDER BY id")
        return [(r[0], r[1]) for r in rows]


def test_migrate_plans_dry_run_then_apply(tmp_path, capsys):
    config = _config(tmp_path)
    db_path = tmp_path / "data" / "voxgate.db"
    asyncio.run(_seed(db_path))

    assert main(["billing", "--config", config, "migrate-plans"]) == 0
    out = capsys.readouterr().out
    assert "would migrate" in out and "build → starter" in out and "agency → growth" in out
    assert "dry run: nothing changed" in out
    assert asyncio.run(_plans(db_path))["build"] == "build"
    assert asyncio.run(_emails(db_path)) == []

    assert main(["billing", "--config", config, "migrate-plans", "--apply"]) == 0
    assert "migrated 3 account(s)" in capsys.readouterr().out
    assert asyncio.run(_plans(db_path)) == {"build": "starter", "pro": "growth",
                                            "agency": "growth", "free": "free",
                                            "growth": "growth"}
    assert asyncio.run(_emails(db_path)) == [("build@example.com", "plan_migrated"),
                                             ("pro@example.com", "plan_migrated"),
                                             ("agency@example.com", "plan_migrated")]
    assert main(["billing", "--config", config, "migrate-plans", "--apply"]) == 0
    assert "no account is on a legacy plan" in capsys.readouterr().out


def test_sync_command_against_localstripe(localstripe, tmp_path, capsys):
    config = _config(tmp_path, stripe_secret_key=SECRET_KEY, api_base=localstripe.url)
    assert main(["billing", "--config", config, "sync"]) == 0
    out = capsys.readouterr().out
    assert "plan voxgate_starter" in out and "plan voxgate_growth" in out
    assert main(["billing", "--config", config, "sync"]) == 0
    again = capsys.readouterr().out
    assert "created" not in again.split("\n", 1)[1]


def test_sync_without_key_fails_clearly(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("STRIPE_SECRET_KEY", raising=False)
    config = _config(tmp_path)
    assert main(["billing", "--config", config, "sync"]) == 1
    assert "set STRIPE_SECRET_KEY" in capsys.readouterr().out
