"""What only the PostgreSQL log shows: races between connections and processes, the schema's
versions, connection errors, NOTIFY, what a read asks the server for, damage, large appends.

The conformance suites (``test_log_contract.py``, ``test_backends.py``) run on it as well.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import asyncpg
import pytest
from _pg import TEST_DATABASE, admin, run_sync, with_database

from asyncart import BackendUnavailableError, ConflictError, IntegrityError, InvalidInputError
from asyncart._backends.base import MAX_NOTE
from asyncart._backends.pg_log import (
    _MIGRATIONS,
    _SCHEMA_V1,
    CHANNEL,
    POOL_SIZE,
    SCHEMA_VERSION,
    PostgresEventLog,
)
from asyncart._server._pg_seen import PostgresSeen

A = "p/artifacts/a"


@pytest.fixture
async def sql(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """An admin connection to the test's schema, beside the log's own."""
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


def _schema(dsn: str) -> str:
    return dsn.rsplit("search_path=", 1)[1]


# -- races -----------------------------------------------------------------------------------


async def test_many_connections_at_one_seq_one_wins_each_time(
    pg_log: PostgresEventLog, pg_dsn: str
) -> None:
    logs = [PostgresEventLog(pg_dsn) for _ in range(8)]
    winners = []
    async with _all_held(logs):
        for seq in range(15):
            tries = [log.append(A, [f"{n}-{seq}".encode()], seq) for n, log in enumerate(logs)]
            results = await asyncio.gather(*tries, return_exceptions=True)
            won = [n for n, result in enumerate(results) if result == seq + 1]
            assert len(won) == 1, results
            lost = [r for r in results if not isinstance(r, int)]
            assert all(isinstance(r, ConflictError) and r.head == seq + 1 for r in lost), lost
            winners.append(f"{won[0]}-{seq}".encode())
    assert await pg_log.read(A) == winners


async def test_two_first_appends_racing_give_one_success_and_one_conflict(
    pg_log: PostgresEventLog, pg_dsn: str, sql: asyncpg.Connection
) -> None:
    """Both wait behind a table lock, then insert the new stream's row at the same time."""
    logs = [PostgresEventLog(pg_dsn) for _ in range(2)]
    async with _all_held(logs):
        for log in logs:
            await log.streams()  # connected and checked: only the appends wait below
        for round_ in range(3):
            stream = f"p/artifacts/new{round_}"
            tx = sql.transaction()
            await tx.start()
            await sql.execute("LOCK TABLE asyncart_streams IN EXCLUSIVE MODE")
            tries = [asyncio.ensure_future(log.append(stream, [b"first"], 0)) for log in logs]
            await _until_waiting(sql, 2)
            await tx.commit()
            results = await asyncio.gather(*tries, return_exceptions=True)
            assert sorted(r == 1 for r in results) == [False, True], results
            (lost,) = [r for r in results if r != 1]
            assert isinstance(lost, ConflictError) and lost.head == 1, lost
            assert await pg_log.read(stream) == [b"first"]


async def _until_waiting(sql: asyncpg.Connection, count: int) -> None:
    """Until ``count`` other sessions wait for a lock."""
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND datname = current_database()"
    )
    with anyio.fail_after(30):
        while True:
            if await sql.fetchval(query) >= count:
                return
            await asyncio.sleep(0.01)


_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from asyncart import ConflictError
    from asyncart._backends.pg_log import PostgresEventLog

    async def main(dsn, name, n):
        log = PostgresEventLog(dsn)
        await log.create()
        seq = wins = 0
        async with log.held():
            for i in range(n):
                while True:
                    try:
                        seq = await log.append(
                            "p/artifacts/race", [f"{name}-{i}".encode()], seq
                        )
                        wins += 1
                        break
                    except ConflictError as moved:
                        seq = moved.head
        print(wins)

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


def test_two_processes_appending_at_the_same_seqs_lose_and_duplicate_nothing(
    pg_dsn: str,
) -> None:
    """Each process creates the schema (racing), then appends 40 records, each at the head
    it last saw: one wins each seq, the other retries at the new head."""
    n = 40
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, pg_dsn, name, str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    outputs = [writer.communicate(timeout=300) for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0], outputs
    assert [out.strip() for out, _ in outputs] == [str(n), str(n)]
    records = run_sync(_read_all, pg_dsn, "p/artifacts/race")
    assert len(records) == 2 * n == len(set(records))
    for name in ("a", "b"):  # each process's records in its own order
        assert [r for r in records if r.startswith(f"{name}-")] == [f"{name}-{i}" for i in range(n)]
    assert run_sync(admin, pg_dsn, "SELECT count(*) FROM asyncart_schema") == [1]


async def _read_all(dsn: str, stream: str) -> list[str]:
    log = PostgresEventLog(dsn)
    return [record.decode() for record in await log.read(stream)]


_CREATOR = textwrap.dedent(
    """
    import asyncio, sys
    from asyncart._backends.pg_log import PostgresEventLog

    async def main(dsn):
        await asyncio.gather(*(PostgresEventLog(dsn).create() for _ in range(4)))

    asyncio.run(main(sys.argv[1]))
    """
)


def test_schema_creation_racing_in_two_processes(pg_dsn: str) -> None:
    creators = [
        subprocess.Popen(
            [sys.executable, "-c", _CREATOR, pg_dsn], stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    errors = [creator.communicate(timeout=300)[1] for creator in creators]
    assert [creator.returncode for creator in creators] == [0, 0], errors
    tables = run_sync(
        admin,
        pg_dsn,
        "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
        " AND tablename LIKE 'asyncart_%'",
        "SELECT version FROM asyncart_schema",
    )
    assert tables == [7, SCHEMA_VERSION]  # streams, records, checkpoints, tokens, uploads,
    # epoch, version


# -- the schema --------------------------------------------------------------------------------


async def test_a_database_without_the_schema_says_to_create_it(pg_dsn: str) -> None:
    log = PostgresEventLog(pg_dsn)
    for call in (log.read(A), log.streams(), log.require()):
        with pytest.raises(BackendUnavailableError, match="no asyncart schema.*asyncart init"):
            await call
    await log.create()
    await log.require()
    assert await log.read(A) == []


async def test_a_newer_schema_is_refused_with_a_clear_error(
    pg_log: PostgresEventLog, pg_dsn: str, sql: asyncpg.Connection
) -> None:
    await pg_log.append(A, [b"r0"], 0)
    await sql.execute("UPDATE asyncart_schema SET version = $1", SCHEMA_VERSION + 1)
    fresh = PostgresEventLog(pg_dsn)
    newer = f"schema version {SCHEMA_VERSION + 1}, newer than this asyncart knows"
    for call in (fresh.read(A), fresh.require(), fresh.create()):
        with pytest.raises(BackendUnavailableError, match=newer) as info:
            await call
        assert "\n" not in str(info.value)


async def test_a_version_2_schema_is_refused_then_migrated_by_create(
    pg_dsn: str, sql: asyncpg.Connection
) -> None:
    """A database made by the release before the uploads table (schema 2), with a record."""
    await sql.execute(_SCHEMA_V1 + _MIGRATIONS[1])
    await sql.execute("INSERT INTO asyncart_schema (version) VALUES (2)")
    await sql.execute("INSERT INTO asyncart_streams (stream, head) VALUES ($1, 1)", A)
    await sql.execute("INSERT INTO asyncart_records VALUES ($1, 0, $2)", A, b"r0")
    old = PostgresEventLog(pg_dsn)
    for call in (old.require(), old.read(A)):
        older = f"version 2, older than {SCHEMA_VERSION}"
        with pytest.raises(BackendUnavailableError, match=older) as info:
            await call
        assert "\n" not in str(info.value) and "asyncart init" in str(info.value)
    await old.create()
    assert await sql.fetchval("SELECT version FROM asyncart_schema") == SCHEMA_VERSION == 4
    fresh = PostgresEventLog(pg_dsn)
    await fresh.require()
    assert await fresh.read(A) == [b"r0"]
    seen = PostgresSeen(fresh)
    await seen.add("tok", {b"d" * 32})
    assert await PostgresSeen(fresh).uploaded("tok", {b"d" * 32, b"e" * 32}) == {b"d" * 32}
    assert await fresh.epoch() == 0  # schema 4: the collection epoch, from 0
    await fresh.aclose()
    await old.aclose()


async def test_a_replicas_memory_of_uploads_is_bounded_and_the_database_answers_the_rest(
    pg_log: PostgresEventLog,
) -> None:
    seen = PostgresSeen(pg_log, cached=3)
    mine = {bytes([n]) * 32 for n in range(10)}
    await seen.add("tok", mine)
    assert len(seen._known) == 3
    assert await seen.uploaded("tok", mine | {b"x" * 32}) == mine  # 7 of them from the table
    assert len(seen._known) == 3
    assert await seen.uploaded("other", mine) == set()
    await seen.add("tok", mine)  # again: nothing new, no error
    assert await PostgresSeen(pg_log).uploaded("tok", mine) == mine


async def test_create_is_idempotent_and_keeps_the_data(
    pg_log: PostgresEventLog, pg_dsn: str
) -> None:
    await pg_log.append(A, [b"r0"], 0, note=b"kept")
    await pg_log.create()
    await PostgresEventLog(pg_dsn).create()
    assert await pg_log.read(A) == [b"r0"]
    assert await pg_log.notes("p/") == {A: b"kept"}


# -- connection errors: one line, ours -----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _refused(dsn: str) -> str:
    with pytest.raises(BackendUnavailableError) as info:
        await PostgresEventLog(dsn).read(A)
    message = str(info.value)
    assert "\n" not in message and type(info.value) is BackendUnavailableError
    return message


async def test_an_unreachable_server_is_named_with_its_port() -> None:
    port = _free_port()
    message = await _refused(f"postgresql://postgres@127.0.0.1:{port}/db")
    assert f"cannot reach PostgreSQL at 127.0.0.1:{port}" in message


async def test_a_wrong_password_is_refused(pg_server: str, pg_dsn: str) -> None:
    """.ci/postgres.sh asks every user but postgres for a password."""
    role = f"u_{_schema(pg_dsn)}"
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'right'")
        host = pg_server.split("@", 1)[1].split("/", 1)[0]
        message = await _refused(f"postgresql://{role}:wrong@{host}/{TEST_DATABASE}")
        assert f"refused user '{role}'" in message and "password" in message
        assert "wrong" not in message  # the password is never shown
        log = PostgresEventLog(f"postgresql://{role}:right@{host}/{TEST_DATABASE}")
        with pytest.raises(BackendUnavailableError, match="no asyncart schema"):
            await log.read(A)  # in: its search_path has no asyncart tables
    finally:
        await conn.execute(f"DROP ROLE {role}")
        await conn.close()


async def test_a_missing_database_says_createdb(pg_server: str) -> None:
    message = await _refused(with_database(pg_server, "asyncart_no_such_db"))
    assert "has no database 'asyncart_no_such_db'" in message
    assert "createdb asyncart_no_such_db" in message and "asyncart init" in message


# -- NOTIFY --------------------------------------------------------------------------------------


async def test_each_append_notifies_at_commit(
    pg_log: PostgresEventLog, sql: asyncpg.Connection
) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()
    await sql.add_listener(CHANNEL, lambda *args: heard.put_nowait(args[3]))
    await pg_log.append(A, [b"r0", b"r1"], 0)
    with pytest.raises(ConflictError):
        await pg_log.append(A, [b"late"], 1)  # rolled back: heard by nobody
    await pg_log.append(A, [f"r{i}".encode() for i in range(2, 102)], 2)  # the COPY path
    got = []
    with anyio.fail_after(30):
        while len(got) < 2:
            got.append(await heard.get())
    assert got == [f"{A} 2", f"{A} 102"]


# -- what a read asks for ------------------------------------------------------------------------


async def _statements(sql: asyncpg.Connection) -> list[tuple[int, int, str]]:
    """(calls, rows, query) of this database's statements since the last reset, but ours."""
    rows = await sql.fetch(
        "SELECT calls, rows, query FROM public.pg_stat_statements"
        " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND query NOT LIKE '%pg_stat_statements%'"
    )
    return [(row[0], row[1], row[2]) for row in rows]


async def test_a_ranged_read_is_one_query_of_the_asked_rows(
    pg_log: PostgresEventLog, pg_server: str, sql: asyncpg.Connection
) -> None:
    try:
        await sql.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements SCHEMA public")
        await sql.fetch("SELECT * FROM public.pg_stat_statements LIMIT 1")
    except asyncpg.PostgresError as e:
        pytest.fail(f"this test needs pg_stat_statements loaded (.ci/postgres.sh does): {e}")
    records = [f"{i:05d}".encode() * 50 for i in range(2000)]
    await pg_log.append(A, records, 0)
    assert await pg_log.read(A, 0, 1) == records[:1]  # statements prepared, types known
    for from_seq, limit in [(1500, 10), (0, 3), (1995, None), (1999, 100)]:
        await sql.execute(
            "SELECT public.pg_stat_statements_reset(0::oid, (SELECT oid FROM pg_database"
            " WHERE datname = current_database()), 0::bigint)"
        )
        got = await pg_log.read(A, from_seq, limit)
        assert got == records[from_seq:][:limit]
        ((calls, rows, query),) = await _statements(sql)
        assert (calls, rows) == (1, len(got)), query
        assert "asyncart_records" in query and "LIMIT" in query


# -- damage ------------------------------------------------------------------------------------


async def test_a_record_deleted_below_the_head_is_an_integrity_error(
    pg_log: PostgresEventLog, sql: asyncpg.Connection
) -> None:
    await pg_log.append(A, [f"r{i}".encode() for i in range(6)], 0)
    await sql.execute("DELETE FROM asyncart_records WHERE stream = $1 AND seq = 2", A)
    for from_seq, limit in [(0, None), (1, 2), (2, 1)]:
        with pytest.raises(IntegrityError, match=f"stream '{A}' seq 2: missing"):
            await pg_log.read(A, from_seq, limit)
    assert await pg_log.read(A, 0, 2) == [b"r0", b"r1"]
    assert await pg_log.read(A, 3) == [b"r3", b"r4", b"r5"]
    await sql.execute("DELETE FROM asyncart_records WHERE stream = $1 AND seq = 5", A)
    with pytest.raises(IntegrityError, match="seq 5: missing .*head is 6"):
        await pg_log.read(A, 3)  # the last one: only the head tells


async def test_records_past_the_head_refuse_the_append(
    pg_log: PostgresEventLog, sql: asyncpg.Connection
) -> None:
    await pg_log.append(A, [b"r0"], 0)
    await sql.execute("INSERT INTO asyncart_records VALUES ($1, 1, 'stray')", A)
    for size in (1, 100):  # one statement, and COPY
        with pytest.raises(IntegrityError, match="past its head"):
            await pg_log.append(A, [b"x"] * size, 1)
    assert await pg_log.read(A) == [b"r0"]


# -- large appends, limits -----------------------------------------------------------------------


async def test_ten_thousand_records_in_one_append(pg_log: PostgresEventLog) -> None:
    records = [f"record {i}".encode() for i in range(10_000)]
    assert await pg_log.append(A, records, 0, note=b"10k") == 10_000
    assert await pg_log.read(A, 9_990) == records[9_990:]
    assert await pg_log.read(A) == records
    with pytest.raises(ConflictError):
        await pg_log.append(A, records, 5_000)  # a stale large append writes nothing
    assert len(await pg_log.read(A)) == 10_000
    assert await pg_log.notes("p/") == {A: b"10k"}


async def test_a_64_mib_append_goes_in_one_call(pg_log: PostgresEventLog) -> None:
    records = [os.urandom(1 << 20) for _ in range(64)]
    assert await pg_log.append(A, [b"first"], 0) == 1
    assert await pg_log.append(A, records, 1) == 65
    assert await pg_log.read(A, 1, 2) == records[:2]
    assert await pg_log.read(A, 64) == records[63:]


async def test_a_note_over_the_limit_is_refused_and_nothing_written(
    pg_log: PostgresEventLog,
) -> None:
    await pg_log.append(A, [b"r0"], 0, note=b"kept")
    with pytest.raises(InvalidInputError, match=f"over the {MAX_NOTE}"):
        await pg_log.append(A, [b"r1"], 1, note=bytes(MAX_NOTE + 1))
    assert await pg_log.read(A) == [b"r0"]
    assert await pg_log.notes(A) == {A: b"kept"}


async def test_listing_handles_names_past_any_prefix_bound(pg_log: PostgresEventLog) -> None:
    """The bound after U+10FFFF carries to the character before it; after U+D7FF it skips
    the surrogates (no characters) to U+E000."""
    names = ["p/x\U0010ffff", "p/x\U0010ffffz", "p/y", "p/\ud7ff", "p/\ud7ffa", "p/\ue000"]
    for name in names:
        await pg_log.append(name, [b"r"], 0)
    assert await pg_log.streams("p/x\U0010ffff") == ["p/x\U0010ffff", "p/x\U0010ffffz"]
    assert await pg_log.streams("p/\ud7ff") == ["p/\ud7ff", "p/\ud7ffa"]
    assert await pg_log.streams("p/\U0010ffff") == []
    assert await pg_log.streams("p/\x00") == []


# -- connections -------------------------------------------------------------------------------


async def test_connections_close_outside_held_and_stay_bounded_inside(
    pg_dsn: str, sql: asyncpg.Connection
) -> None:
    name = f"a_{_schema(pg_dsn)}"
    log = PostgresEventLog(f"{pg_dsn}&application_name={name}")
    await log.create()
    await log.append(A, [b"r0"], 0)
    assert await log.read(A) == [b"r0"]
    await _until_connections(sql, name, lambda n: n == 0)  # nothing left open
    peak = 0
    async with log.held():
        await asyncio.gather(*(log.read(A) for _ in range(4 * POOL_SIZE)))
        peak = await _connections(sql, name)
        assert 1 <= peak <= POOL_SIZE
        await log.aclose()  # even inside held
        await _until_connections(sql, name, lambda n: n == 0)
        assert await log.read(A) == [b"r0"]  # opens anew
    await _until_connections(sql, name, lambda n: n == 0)


async def _connections(sql: asyncpg.Connection, name: str) -> int:
    count: int = await sql.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name
    )
    return count


async def _until_connections(sql: asyncpg.Connection, name: str, ok: Any) -> None:
    """A closed connection's server process ends a moment after the client lets go."""
    with anyio.fail_after(30):
        while True:
            if ok(await _connections(sql, name)):
                return
            await asyncio.sleep(0.01)


@asynccontextmanager
async def _all_held(logs: list[PostgresEventLog]) -> AsyncIterator[None]:
    """Hold every log of ``logs`` for the block."""
    async with AsyncExitStack() as stack:
        for log in logs:
            await stack.enter_async_context(log.held())
        yield
