"""``voxgate web create-operator EMAIL [--password PW] [--config FILE]``
(also reachable as ``voxgate admin create-operator``): give a dashboard
user the operator role, creating the user (and an account) when needed."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register", "create_operator_command"]


async def create_operator_command(config: str | None, email: str, password: str | None) -> int:
    """Open the store, make ``email`` an operator and print the result as
    JSON on stdout (with the generated password when none was given for a
    new user; notices go to stderr). Returns
    the exit status: 0, or 2 when ``password`` fails the password policy
    (the reason goes to stderr). The operator enrolls two-factor sign-in
    at ``/account/2fa`` on first sign-in."""
    from voxgate.config import load_settings
    from voxgate.models import load_catalog
    from voxgate.store import open_store
    from voxgate.web.auth import PasswordRefused, create_operator, load_secret
    from voxgate.web.db import WebDB

    settings = load_settings(config)
    store = open_store(settings)
    await store.open()
    try:
        secret = settings.web.session_secret
        db = WebDB(store, load_secret(secret.get_secret_value() if secret else None,
                                      settings.data_dir))
        try:
            user, generated = await create_operator(store, db, load_catalog(settings.catalog),
                                                    email, password)
        except PasswordRefused as exc:
            print(f"password refused: {exc}", file=sys.stderr)
            return 2
        await db.audit("cli", "operator.created", user.account_id, {"email": user.email})
        out: dict[str, Any] = {"id": user.id, "email": user.email, "account_id": user.account_id,
                               "role": user.role}
        if generated:
            out["password"] = generated
        print(json.dumps(out))
        if generated:
            print("(the password is shown once: store it now)", file=sys.stderr)
        if not user.has_2fa:
            print("(operators enroll two-factor sign-in at /account/2fa on first sign-in)",
                  file=sys.stderr)
        return 0
    finally:
        await store.close()


def _run(args: argparse.Namespace) -> int:
    from voxgate.aio import run_async

    return run_async(create_operator_command(args.config, args.email, args.password))


def register(subparsers: Any) -> None:
    web = subparsers.add_parser("web", help="the web dashboard")
    wsub = web.add_subparsers(dest="web_command", required=True)
    op = wsub.add_parser("create-operator", help="make EMAIL a dashboard operator")
    op.add_argument("email")
    op.add_argument("--password", default=None, help="set this password (default: keep it, "
                    "or generate one for a new user)")
    op.add_argument("--config", help="TOML configuration file")
    op.set_defaults(func=_run)
