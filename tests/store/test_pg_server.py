"""voxgate on PostgreSQL end to end: two servers ("processes") on one fresh
PostgreSQL database (127.0.0.1:5432), real WebSocket sessions on both."""

from __future__ import annotations

import uuid

import psycopg
import pytest
import pytest_asyncio

from tests.conftest import PG_URL
from tests.test_ws_relay import recv_until, sdk, session_id_of


@pytest_asyncio.fixture
async def pg_database():
    """The URL of a fresh database on PG_URL's server, dropped after."""
    name = f"voxgate_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = await psycopg.AsyncConnection.connect(PG_URL, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL}: {exc} (make test starts it)")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield PG_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_two_servers_on_one_postgresql_database(make_server, pg_database):
    url = pg_database.replace("postgresql://", "postgresql+asyncpg://")  # accepted as well
    a = await make_server(database_url=url)
    b = await make_server(database_url=url)  # starting it touches none of a's sessions
    assert {i.id for i in await a.store.list_instances()} == {a.gateway.instance_id,
                                                             b.gateway.instance_id}
    async with sdk(a).realtime.connect(model="gpt-realtime") as on_a:
        sid_a = session_id_of(on_a)
        await recv_until(on_a, "session.created")
        async with sdk(b).realtime.connect(model="gpt-realtime") as on_b:
            sid_b = session_id_of(on_b)
            await recv_until(on_b, "session.created")
            rows = {s.id: s for s in await b.store.list_sessions(a.account_id)}
            assert rows[sid_a].status == "active"  # a's, seen from b
    for server, sid in ((a, sid_a), (b, sid_b)):
        record = await server.session(sid)
        assert record.measurements.closed_by == "client" and record.reason != "interrupted"
    assert (await b.store.get_session(sid_a)).account_id == a.account_id
    usage = await a.store.list_usage(b.account_id)
    assert [u.sessions for u in usage] == [1]


async def test_a_dropped_connection_is_replaced(tmp_path):
    """The server ends the store's connection (as a restart would): the call
    that finds it broken fails with ServiceUnavailable (a 503 at the edge,
    translated where raised from psycopg's OperationalError), the next one
    runs on a new connection."""
    from tests.conftest import drop_store, open_store
    from voxgate.errors import ServiceUnavailable, dependency_error

    store = await open_store("postgresql", tmp_path)
    try:
        account = await store.create_account("ada@example.com", "starter")
        [(pid,)] = await store.db.execute_fetchall("SELECT pg_backend_pid()")
        async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as admin:
            await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(ServiceUnavailable) as failed:
            await store.get_account(account.id)
        assert isinstance(failed.value.__cause__, psycopg.OperationalError)
        assert dependency_error(failed.value).status == 503
        assert (await store.get_account(account.id)).email == "ada@example.com"
        [(new_pid,)] = await store.db.execute_fetchall("SELECT pg_backend_pid()")
        assert new_pid != pid
    finally:
        await drop_store(store)
