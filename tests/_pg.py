"""A real PostgreSQL server for the tests, and a fresh, empty place in it per test.

- ``pg_server`` (session): the admin DSN of a server. ``$ASYNCART_TEST_PG`` if set (CI sets
  it after ``.ci/postgres.sh start``); else this starts one with ``.ci/postgres.sh`` for the
  session and stops it at the end. A test that needs it and cannot have it fails, with the
  reason; it never skips.
- ``pg_dsn`` (function): the DSN of a new, empty schema (``?search_path=t_...``) in the
  database ``asyncart_test``, dropped after the test. A schema costs a few milliseconds where
  ``CREATE DATABASE`` costs about 330 ms here (it copies template0 through the WAL, fsynced).
- ``pg_log``: a :class:`PostgresEventLog` on ``pg_dsn`` with its schema created, held.

The admin statements run in a thread of their own with their own event loop, so that sync
fixtures can use them and no test's loop (or blockbuster) sees them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

from asyncart._backends.pg_log import PostgresEventLog

PG_ENV = "ASYNCART_TEST_PG"
SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "postgres.sh"
TEST_DATABASE = "asyncart_test"


def with_database(dsn: str, database: str, **params: str) -> str:
    """``dsn`` with another database and these query parameters added."""
    parts = urlsplit(dsn)
    query = [*parse_qsl(parts.query), *params.items()]
    return urlunsplit(parts._replace(path="/" + database, query=urlencode(query)))


def run_sync(coroutine_function: Any, *args: Any) -> Any:
    """Run ``coroutine_function(*args)`` to completion in a new thread with its own loop."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coroutine_function(*args))
        except BaseException as e:  # handed to the caller's thread
            result["error"] = e

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


async def admin(dsn: str, *statements: str) -> list[Any]:
    """Run ``statements`` on ``dsn``; the value of each (``fetchval``)."""
    conn = await asyncpg.connect(dsn)
    try:
        return [await conn.fetchval(sql) for sql in statements]
    finally:
        await conn.close()


def _start_server() -> tuple[str, str]:
    root = tempfile.mkdtemp(prefix="asyncart-pg-")  # in /tmp: user postgres must reach it
    os.chmod(root, 0o755)
    try:
        started = subprocess.run(
            ["bash", str(SCRIPT), "start", root], capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        started = subprocess.CompletedProcess([], 1, "", str(e))
    if started.returncode:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(
            f"no PostgreSQL for the tests: {SCRIPT.name} start failed "
            f"({started.stderr.strip()[-1500:]}); install PostgreSQL, or set ${PG_ENV} "
            "to a server's admin DSN",
            pytrace=False,
        )
    return root, started.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The admin DSN of a PostgreSQL server (``$ASYNCART_TEST_PG``, else one started here)."""
    dsn = os.environ.get(PG_ENV)
    root = None
    if not dsn:
        root, dsn = _start_server()
    try:
        try:
            exists = run_sync(
                admin, dsn, f"SELECT 1 FROM pg_database WHERE datname = '{TEST_DATABASE}'"
            )[0]
            if not exists:
                run_sync(admin, dsn, f"CREATE DATABASE {TEST_DATABASE} TEMPLATE template0")
        except (OSError, asyncpg.PostgresError) as e:
            source = f"${PG_ENV}" if root is None else SCRIPT.name
            pytest.fail(f"PostgreSQL at {dsn} (from {source}) does not answer: {e}", pytrace=False)
        yield dsn
    finally:
        if root is not None:
            subprocess.run(["bash", str(SCRIPT), "stop", root], capture_output=True, timeout=120)
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_dsn(pg_server: str) -> Iterator[str]:
    """The DSN of a fresh, empty schema of its own (the first of its ``search_path``)."""
    schema = f"t_{secrets.token_hex(6)}"
    run_sync(admin, with_database(pg_server, TEST_DATABASE), f"CREATE SCHEMA {schema}")
    yield with_database(pg_server, TEST_DATABASE, search_path=schema)
    run_sync(admin, with_database(pg_server, TEST_DATABASE), f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
async def pg_log(pg_dsn: str) -> AsyncIterator[PostgresEventLog]:
    """A log on ``pg_dsn`` with its schema created, held for the test."""
    log = PostgresEventLog(pg_dsn)
    await log.create()
    async with log.held():
        yield log


class PgStore:
    """Just enough of a store for the ``EventLogContract`` suite: a log."""

    def __init__(self, log: PostgresEventLog) -> None:
        self.log = log
