"""The ``voxgate`` command line.

- ``voxgate serve [--host] [--port] [--config FILE] [--workers N|auto]``
- ``voxgate migrate [--check] [--config FILE]`` — apply the pending schema
  migrations (``--check``: list them, exit status 1 if any)
- ``voxgate call [--audio FILE] [--url URL] [--key KEY] [--out reply.wav] [--json]``
- ``voxgate voice serve [--host] [--port]`` — the local voice provider alone
- ``voxgate admin create-account|create-project|create-key|revoke-key|create-admin-key|
  revoke-admin-key|set-origins|set-models|set-ips|set-plan|usage|accounts|margin|
  set-spend-limit``
- ``voxgate openapi [--markdown]`` — the OpenAPI document (JSON), or the API
  reference ``docs/api.md`` (Markdown)

Other rooms add their own subcommands with a ``register(subparsers)`` in
``voxgate.billing.cli``, ``voxgate.web.cli`` and ``voxgate.loadtest.cli``.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib
import importlib.util
import logging
import os
import socket
import sys
from typing import Any

from voxgate.aio import run_async
from voxgate.config import Settings, load_settings
from voxgate.errors import ConfigError

__all__ = ["main", "settings_from_args", "bind_listener", "bind_error_message",
           "run_migrate"]

EXTENSIONS = ("voxgate.billing.cli", "voxgate.web.cli", "voxgate.loadtest.cli")


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "port", None) is not None:
        overrides["port"] = args.port
    return load_settings(getattr(args, "config", None), **overrides)


def bind_listener(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A TCP socket listening on ``host:port`` (``SO_REUSEADDR``, as aiohttp's
    own sites set it; ``SO_REUSEPORT`` too with ``reuse_port``, so that the
    workers of ``--workers`` share the port), for :class:`aiohttp.web.SockSite`.

    Raises:
        OSError: the address is in use, not local, or not allowed.
    """
    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                flags=socket.AI_PASSIVE)[0][0]
    return socket.create_server((host, port), family=family, backlog=128, reuse_port=reuse_port)


def bind_error_message(host: str, port: int, exc: OSError) -> str:
    """The one line ``voxgate serve`` prints when it cannot listen."""
    if exc.errno == errno.EADDRINUSE:
        return (f"voxgate: port {port} on {host} is already in use (another voxgate?); "
                f"choose another with --port or VOXGATE_PORT, e.g. voxgate serve --port {port + 1}")
    return f"voxgate: cannot listen on {host}:{port}: {exc.strerror or exc}"


def _serve(args: argparse.Namespace) -> int:
    from voxgate.proxy.workers import parse_workers, supervise, workers_refusal
    from voxgate.server import REFUSE_UNSHARED, create_app

    settings = settings_from_args(args)
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        workers = parse_workers(args.workers)
    except ValueError:
        print(f"voxgate: --workers takes a whole number of at least 1, or auto, not "
              f"{args.workers!r}", file=sys.stderr)
        return 2
    refusal = workers_refusal(workers, settings.admission_url, settings.port)
    if refusal is not None:
        print(refusal, file=sys.stderr)
        return 2
    # Bind first: when the port is taken nothing (data directory, database,
    # demo account) has been created yet.
    try:
        listener = bind_listener(settings.host, settings.port, reuse_port=args.reuse_port)
    except OSError as exc:
        print(bind_error_message(settings.host, settings.port, exc), file=sys.stderr)
        return 1
    if workers > 1:  # the parent only supervises: the workers bind with SO_REUSEPORT
        listener.close()
        child_args = ["--port", str(settings.port)]
        child_args += ["--host", args.host] if args.host else []
        child_args += ["--config", args.config] if args.config else []
        return int(run_async(supervise(workers, child_args, f"http://{settings.host}:"
                                       f"{settings.port}", settings.instance_id)))
    app = create_app(settings)
    app[REFUSE_UNSHARED] = True  # PostgreSQL + in-process admission: alone or not at all
    try:
        run_async(serve_app(app, listener, f"http://{settings.host}:{listener.getsockname()[1]}"))
    except KeyboardInterrupt:  # a second Ctrl-C during the drain
        pass
    return 0


def freeze_startup_heap() -> None:
    """Take what start-up made (modules, the app, its stores and models) out
    of the cyclic garbage collector's sight (``gc.freeze``), so a full
    collection scans only what sessions made since. A full collection stops
    the event loop: over the whole heap it took 100-146 ms with 50 WebRTC
    calls live, and every call heard the gap at once (a call's audio goes
    out every 20 ms)."""
    import gc

    gc.collect()
    gc.freeze()


async def serve_app(app: Any, listener: socket.socket, url: str) -> None:
    """Serve ``app`` on ``listener`` until SIGTERM or SIGINT, then stop
    gracefully: ``voxgate.server.drain`` (readiness fails, new sessions
    503, live ones get ``drain_timeout_s``, then close 1001; a second signal
    closes them at once), then the app's clean-up. Returns normally (exit
    status 0)."""
    import signal

    from aiohttp import web

    from voxgate.proxy.keys import GATEWAY
    from voxgate.server import drain

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # also during start-up (the voice model loads)
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=10)
    try:
        await runner.setup()
        site = web.SockSite(runner, listener)
        await site.start()
        freeze_startup_heap()
        print(f"voxgate listening on {url}", flush=True)
        await stop.wait()
        logging.getLogger("voxgate").info("stopping: draining live sessions")
        for sig in (signal.SIGTERM, signal.SIGINT):  # a second one: close them now
            loop.add_signal_handler(sig, app[GATEWAY].end_drain)
        await drain(app)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()


async def run_migrate(settings: Settings, *, check: bool = False) -> int:
    """``voxgate migrate``: open the database the settings name, verify the
    checksums of the applied migrations and apply the pending ones (each in
    a transaction of its own, under the migration lock), printing one line
    per migration applied. With ``check`` nothing is applied: the pending
    ones are listed and the exit status is 1 if there are any.

    Returns the exit status (0, or 1 for ``check`` with pending migrations).

    Raises:
        MigrationError: an applied migration's file changed, or a migration
            failed (a ``ConfigError``: ``main`` prints it, exit status 2).
    """
    from voxgate.store import open_store
    from voxgate.store.migrate import PendingMigrations

    store: Any = open_store(settings)
    store.auto_migrate = not check
    try:
        await store.open()
    except PendingMigrations as pending:
        print(f"{len(pending.pending)} pending migration(s):")
        for migration in pending.pending:
            print(f"  {migration.label}")
        return 1
    try:
        version = max((v for v, _ in await store.applied_migrations()), default=0)
        for migration in store.migrations_applied:
            print(f"applied {migration.label}")
        if not store.migrations_applied:
            print(f"no pending migrations: the schema is at version {version:04d}")
    finally:
        await store.close()
    return 0


def _migrate(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    logging.basicConfig(level=settings.log_level)
    return int(run_async(run_migrate(settings, check=args.check)))


def _voice_serve(args: argparse.Namespace) -> int:
    from voxgate.voice.server import serve_forever

    settings = settings_from_args(argparse.Namespace(config=args.config))
    logging.basicConfig(level=settings.log_level)
    host = args.host or settings.voice.host
    port = args.port if args.port is not None else (settings.voice.port or 8090)
    try:
        run_async(serve_forever(settings.voice, host, port))
    except KeyboardInterrupt:
        pass
    return 0


def _call(args: argparse.Namespace) -> int:
    from voxgate.call import run_call

    return run_async(run_call(args))


def _admin(args: argparse.Namespace) -> int:
    from voxgate.admin import run_admin

    return run_async(run_admin(args))


def _openapi(args: argparse.Namespace) -> int:
    """``voxgate openapi [--markdown]``: the OpenAPI document
    (``voxgate.proxy.openapi``) as JSON on stdout, or the Markdown API
    reference (``voxgate.proxy.openapi_markdown``, ``docs/api.md``)."""
    import json

    from voxgate.proxy.openapi import document
    from voxgate.proxy.openapi_markdown import markdown

    sys.stdout.write(markdown() if args.markdown else json.dumps(document(), indent=2) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voxgate",
        description="voxgate: a real-time voice-session proxy with inline metering for OpenAI "
                    "Realtime clients.",
        epilog="Run voxgate COMMAND --help for a command's options.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the proxy (and the embedded local voice provider)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080)")
    serve.add_argument("--config", help="TOML configuration file")
    serve.add_argument("--workers", default="1", metavar="N",
                       help="processes serving the port (SO_REUSEPORT); auto = one per CPU; "
                            "more than 1 needs admission_url = \"redis://...\" (default 1)")
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # a worker
    serve.set_defaults(func=_serve)

    migrate = sub.add_parser("migrate", help="apply the pending schema migrations and say which")
    migrate.add_argument("--check", action="store_true",
                         help="apply nothing: list the pending migrations, exit status 1 if any")
    migrate.add_argument("--config", help="TOML configuration file")
    migrate.set_defaults(func=_migrate)

    call = sub.add_parser("call", help="stream a recording through voxgate with the openai SDK")
    call.add_argument("--audio", default=None,
                      help="WAV, FLAC or raw (16 kHz s16le) file (default: the shipped sample, "
                           "11 s of JFK)")
    call.add_argument("--url", default=None, help="voxgate base URL (default http://127.0.0.1:8080)")
    call.add_argument("--key", default=None, help="project API key (default: the demo key)")
    call.add_argument("--out", default="reply.wav", help="where to save the reply audio")
    call.add_argument("--model", default="gpt-realtime")
    call.add_argument("--json", action="store_true", help="print one JSON object")
    call.add_argument("--config", help="TOML configuration file (for the data directory)")
    call.add_argument("--speed", type=float, default=1.0, help="stream at N× real time")
    call.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the reply")
    call.add_argument("--vad", action="store_true",
                      help="let server VAD find the turns instead of committing the whole recording")
    call.set_defaults(func=_call)

    voice = sub.add_parser("voice", help="the local voice provider")
    vsub = voice.add_subparsers(dest="voice_command", required=True)
    vserve = vsub.add_parser("serve", help="run the local voice provider alone")
    vserve.add_argument("--host")
    vserve.add_argument("--port", type=int)
    vserve.add_argument("--config")
    vserve.set_defaults(func=_voice_serve)

    admin = sub.add_parser("admin", help="accounts, projects, keys and usage")
    admin.add_argument("--config")
    asub = admin.add_subparsers(dest="admin_command", required=True)
    a = asub.add_parser("create-account", help="a new account (JSON: id, email, plan)")
    a.add_argument("email")
    a.add_argument("--plan", default=None, help="a plan of the catalog (default: its default plan)")
    a.add_argument("--name", default="")
    a = asub.add_parser("create-project", help="a new project of ACCOUNT_ID")
    a.add_argument("account_id")
    a.add_argument("name")
    a = asub.add_parser("create-key", help="a new project API key (JSON; the key is shown once)")
    a.add_argument("project_id")
    a.add_argument("--name", default="")
    a = asub.add_parser("set-origins",
                        help="web origins the project's ephemeral keys may be used from "
                             "(none = any origin)")
    a.add_argument("project_id")
    a.add_argument("origins", nargs="*", metavar="ORIGIN", help="e.g. https://app.example.com")
    a = asub.add_parser("set-models", help="models the project may use (none = any)")
    a.add_argument("project_id")
    a.add_argument("models", nargs="*", metavar="MODEL", help="e.g. gpt-realtime")
    a = asub.add_parser("set-ips", help="client networks the project's API keys may be used "
                                        "from (none = any)")
    a.add_argument("project_id")
    a.add_argument("networks", nargs="*", metavar="CIDR", help="e.g. 203.0.113.0/24")
    a = asub.add_parser("create-admin-key",
                        help="an account admin key: account-wide reads and billing actions")
    a.add_argument("account_id")
    a.add_argument("--name", default="")
    a = asub.add_parser("revoke-admin-key", help="revoke an admin key by its id")
    a.add_argument("key_id")
    a = asub.add_parser("revoke-key", help="revoke a project API key by its id")
    a.add_argument("key_id")
    a = asub.add_parser("set-plan", help="put ACCOUNT_ID on PLAN at once (no Stripe involved)")
    a.add_argument("account_id")
    a.add_argument("plan")
    a = asub.add_parser("usage", help="this period's usage of ACCOUNT_ID (JSON)")
    a.add_argument("account_id")
    asub.add_parser("accounts", help="every account: id, email, plan, status (tab-separated)")
    a = asub.add_parser("margin", help="revenue, provider cost and margin of a month per plan "
                                       "and account, lowest margin first")
    a.add_argument("--period", default=None, help="YYYY-MM (default: this month)")
    a.add_argument("--json", action="store_true", help="the JSON of GET /admin/margin")
    a = asub.add_parser("set-spend-limit",
                        help="cap ACCOUNT_ID's monthly provider cost at USD (none = its plan's)")
    a.add_argument("account_id")
    a.add_argument("usd", help="e.g. 25.00, or none")
    a = asub.add_parser("create-operator", help="make EMAIL a dashboard operator")
    a.add_argument("email")
    a.add_argument("--password", default=None)
    admin.set_defaults(func=_admin)

    openapi = sub.add_parser("openapi", help="print the OpenAPI document of the HTTP routes (JSON)")
    openapi.add_argument("--markdown", action="store_true",
                         help="print the Markdown API reference instead (docs/api.md)")
    openapi.set_defaults(func=_openapi)

    for name in EXTENSIONS:
        if _module_exists(name):
            importlib.import_module(name).register(sub)
    return parser


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"voxgate: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout closed early (`voxgate admin usage … | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
