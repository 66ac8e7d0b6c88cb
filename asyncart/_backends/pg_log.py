"""The PostgreSQL event log: streams in a database, through asyncpg.

Example::

    log = PostgresEventLog("postgresql://user:password@db.example:5432/asyncart")
    await log.create()  # once per database (``asyncart init``); idempotent, safe to race
    async with log.held():  # one pool for many calls (else each call connects)
        head = await log.append("p/artifacts/a", [b"record"], 0, note=b"summary")

The schema (version 4), created and migrated by :meth:`PostgresEventLog.create` in the first
schema of the connection's ``search_path`` (``public`` unless the DSN says
``?search_path=NAME``)::

    asyncart_schema       (version int)                 -- one row: the schema's version
    asyncart_streams      (stream text COLLATE "C" PRIMARY KEY, head bigint, note bytea)
    asyncart_records      (stream text COLLATE "C", seq bigint, payload bytea,
                           PRIMARY KEY (stream, seq))
    asyncart_checkpoints  (stream text COLLATE "C" PRIMARY KEY, data bytea)
    asyncart_tokens       (sha256 text PRIMARY KEY, id, projects, write, admin, note, created)
                          -- a server's tokens (hashed), shared by its replicas
    asyncart_uploads      (token text, digest bytea, PRIMARY KEY (token, digest))
                          -- which token uploaded which blob (its replicas' blob scope)
    asyncart_epoch        (epoch bigint)                -- one row: the collection epoch

- A stream's row holds its head (the next seq) and note. An append is one transaction: it
  updates the row where ``head = expected_seq`` (or inserts it, ``ON CONFLICT DO NOTHING``,
  for a new stream), which locks it, so a racing append waits, then finds the head moved:
  ``ConflictError``, never a unique violation. The same transaction inserts the records and
  sends ``NOTIFY asyncart_append, '<stream> <head>'`` (delivered at commit, so a listener
  never hears of an append it cannot read). Small appends are one statement (records as an
  ``unnest``-ed array: one round trip); larger ones ``COPY`` their records (see bench/).
- Names sort byte-wise (``COLLATE "C"``), so a prefix is a range of the primary key:
  listing costs the streams under the prefix, whatever else the database holds.
- A read asks for exactly its rows, with the head in the same statement: a seq missing
  below the head (a row deleted by hand) is an ``IntegrityError`` naming stream and seq.
- Records reference no stream row (no foreign key): the stream's lock already orders
  appends, and a per-row check would cost every insert.
- Checkpoints have their own table: saving one never waits for, or blocks, an append.
- The collector lock (see ``asyncart/_gc.py``) is an advisory lock keyed by the schema's
  name: a garbage collector holds it exclusively (on its session) while it sweeps; an append
  that carries an epoch takes it shared for its transaction and reads the epoch in a later
  statement (so its snapshot sees every sweep that has let go). Waiters poll with
  ``pg_try_...`` rather than block on a connection: in a server the collector and the
  appenders share one pool, and blocked appenders holding every connection would starve the
  collector's own reads.

The first call of a log checks the schema (:meth:`PostgresEventLog.require`) once. asyncpg
runs on asyncio only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
import asyncpg

from .._errors import (
    BackendUnavailableError,
    CollectedError,
    ConflictError,
    IntegrityError,
    InvalidInputError,
)
from .._names import check_entry_path
from ._pg_pool import PgPool, schema_missing
from .base import MAX_NOTE

SCHEMA_VERSION = 4
"""The schema version this code creates and knows."""
CHANNEL = "asyncart_append"
"""The ``LISTEN`` channel of appends; each notification's payload is ``'<stream> <head>'``."""
POOL_SIZE = 4
"""Connections a held log opens at most. The library's log calls are mostly sequential (the
transfer pool works on blobs), so a few cover a listing or a read beside an append; each
PostgreSQL connection is a server process, and a fleet of workers shares its
``max_connections`` (100 by default)."""

_LOCK = 0x6173796E63617274  # "asyncart": the advisory lock that serializes create()
_SWEEP_KEY = f"{0x61726763}, hashtext(current_schema())"  # "argc", per schema
_SWEEP_POLL = 0.05  # seconds between tries of the collector lock while a collector sweeps
_COPY_AT = 64  # records, or
_COPY_BYTES = 1 << 20  # bytes: from here an append COPYs its records (faster than unnest)

_SCHEMA_V1 = """
CREATE TABLE asyncart_schema (
    version int NOT NULL,
    one boolean PRIMARY KEY DEFAULT true CHECK (one)
);
CREATE TABLE asyncart_streams (
    stream text COLLATE "C" PRIMARY KEY,
    head bigint NOT NULL,
    note bytea NOT NULL DEFAULT ''
);
CREATE TABLE asyncart_records (
    stream text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    payload bytea NOT NULL,
    PRIMARY KEY (stream, seq)
);
CREATE TABLE asyncart_checkpoints (
    stream text COLLATE "C" PRIMARY KEY,
    data bytea NOT NULL
);
"""
_MIGRATIONS: dict[int, str] = {  # version n -> the DDL that makes it n + 1
    # 2: the tokens of servers on this store (asyncart/_server/_pg_tokens.py)
    1: """
    CREATE TABLE asyncart_tokens (
        sha256 text PRIMARY KEY,
        id text NOT NULL,
        projects text[] NOT NULL,
        write boolean NOT NULL,
        admin boolean NOT NULL,
        note text NOT NULL,
        created double precision
    );
    """,
    # 3: the blobs each token uploaded, seen by every replica (asyncart/_server/_pg_seen.py)
    2: """
    CREATE TABLE asyncart_uploads (
        token text NOT NULL,
        digest bytea NOT NULL,
        PRIMARY KEY (token, digest)
    );
    """,
    # 4: the collection epoch (asyncart/_gc.py)
    3: """
    CREATE TABLE asyncart_epoch (
        epoch bigint NOT NULL,
        one boolean PRIMARY KEY DEFAULT true CHECK (one)
    );
    INSERT INTO asyncart_epoch (epoch) VALUES (0);
    """,
}

_CREATED = """
INSERT INTO asyncart_streams (stream, head, note) VALUES ($1, $2::bigint + $3::bigint, $4)
ON CONFLICT (stream) DO NOTHING
RETURNING head, pg_notify('asyncart_append', $1 || ' ' || head) IS NULL
"""
_MOVED = """
UPDATE asyncart_streams SET head = $2::bigint + $3::bigint, note = $4
WHERE stream = $1 AND head = $2
RETURNING head, pg_notify('asyncart_append', $1 || ' ' || head) IS NULL
"""
_WITH_RECORDS = """
WITH stream AS ({}), records AS (
    INSERT INTO asyncart_records (stream, seq, payload)
    SELECT $1, $2 + u.ord - 1, u.payload
    FROM stream, unnest($5::bytea[]) WITH ORDINALITY AS u(payload, ord)
)
SELECT head FROM stream
"""
_READ = """
SELECT s.head, r.seq, r.payload
FROM asyncart_streams AS s
LEFT JOIN LATERAL (
    SELECT seq, payload FROM asyncart_records
    WHERE stream = s.stream AND seq >= $2 AND seq < s.head
    ORDER BY seq LIMIT $3
) AS r ON true
WHERE s.stream = $1
"""


class PostgresEventLog:
    """An :class:`~asyncart._backends.base.EventLog` in a PostgreSQL database.

    Args:
        dsn: ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE`` (libpq's URI form; query
            parameters such as ``sslmode`` or ``search_path`` allowed). Nothing connects
            until the first call.
        connections: the most connections open at once while held.
    """

    def __init__(self, dsn: str, *, connections: int = POOL_SIZE) -> None:
        self._pool = PgPool(dsn, connections)
        self._checked = False

    @property
    def location(self) -> str:
        """The database, for messages (no password)."""
        where = self._pool.where
        return f"postgresql://{where.user}@{where}/{where.database}"

    def held(self) -> AbstractAsyncContextManager[None]:
        """Keep the connections open for the block (re-entrant); outside any, each call
        opens the one it needs and closes it before returning."""
        return self._pool.held()

    async def aclose(self) -> None:
        """Close every connection now, even inside ``held`` (the next call opens anew)."""
        await self._pool.aclose()

    # -- the schema ---------------------------------------------------------------------------

    async def create(self) -> None:
        """Create the schema, or migrate an older one; nothing if it is current. Safe when
        several processes race (an advisory lock serializes them).

        Raises:
            BackendUnavailableError: the schema is newer than this code, or the database
                cannot be reached.
        """
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
            version = await _version(conn)
            if version is None:
                await conn.execute(_SCHEMA_V1)
                await conn.execute("INSERT INTO asyncart_schema (version) VALUES ($1)", 1)
                version = 1
            self._check_version(version, migrating=True)
            for old in range(version, SCHEMA_VERSION):
                await conn.execute(_MIGRATIONS[old])
            await conn.execute("UPDATE asyncart_schema SET version = $1", SCHEMA_VERSION)
        self._checked = True

    async def require(self) -> None:
        """Check that the schema is there and of this code's version.

        Raises:
            BackendUnavailableError: no schema, an older one (run :meth:`create`), or a
                newer one (upgrade asyncart).
        """
        async with self._pool.connection() as conn:
            await self._require(conn)

    async def _require(self, conn: asyncpg.Connection) -> None:
        version = await _version(conn)
        if version is None:
            raise schema_missing(self._pool.where)
        self._check_version(version, migrating=False)
        self._checked = True

    def _check_version(self, version: int, migrating: bool) -> None:
        where = self._pool.where
        if version > SCHEMA_VERSION:
            raise BackendUnavailableError(
                f"database {where.database!r} at {where} has asyncart schema version "
                f"{version}, newer than this asyncart knows ({SCHEMA_VERSION}): upgrade asyncart"
            )
        if version < SCHEMA_VERSION and not migrating:
            raise BackendUnavailableError(
                f"database {where.database!r} at {where} has asyncart schema version "
                f"{version}, older than {SCHEMA_VERSION}: migrate it with `asyncart init` "
                "(PostgresEventLog.create())"
            )

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the log's pool, the schema checked on this log's first use (for
        the server's tables beside the log's)."""
        async with self._pool.connection() as conn:
            if not self._checked:
                await self._require(conn)
            yield conn

    # -- the contract -------------------------------------------------------------------------

    async def read(self, stream: str, from_seq: int = 0, limit: int | None = None) -> list[bytes]:
        if from_seq < 0 or (limit is not None and limit < 0):
            raise InvalidInputError(f"cannot read {limit} records from seq {from_seq}")
        check_entry_path(stream)
        async with self.connection() as conn:
            rows = await conn.fetch(_READ, stream, from_seq, limit)
        if not rows:
            return []
        head = rows[0][0]
        stop = head if limit is None else min(head, from_seq + limit)
        payloads = [row[2] for row in rows if row[1] is not None]
        for offset, row in enumerate(rows[: len(payloads)]):
            if row[1] != from_seq + offset:
                raise _missing(stream, from_seq + offset, head)
        if len(payloads) < stop - from_seq:
            raise _missing(stream, from_seq + len(payloads), head)
        return payloads

    async def append(
        self,
        stream: str,
        payloads: Sequence[bytes],
        expected_seq: int,
        note: bytes = b"",
        *,
        epoch: int | None = None,
    ) -> int:
        if len(note) > MAX_NOTE:
            raise InvalidInputError(
                f"the note of stream {stream!r} is {len(note)} bytes, over the {MAX_NOTE} a "
                "stream's note may have (keep less in it)"
            )
        check_entry_path(stream)
        records = list(payloads)
        copied = len(records) >= _COPY_AT or sum(map(len, records)) >= _COPY_BYTES
        async with self._appending(epoch) as conn:
            try:
                if epoch is not None:
                    current = await conn.fetchval("SELECT epoch FROM asyncart_epoch")
                    if current != epoch:
                        raise CollectedError(stream, expected_seq, epoch, current)
                if copied:
                    head = await _append_copied(conn, stream, records, expected_seq, note)
                else:
                    head = await _append_small(conn, stream, records, expected_seq, note)
            except asyncpg.UniqueViolationError:  # rows past the head: added by hand
                raise IntegrityError(
                    f"stream {stream!r}: records past its head (seq {expected_seq} on) are in "
                    "the database already, written outside asyncart; nothing was appended "
                    "(inspect asyncart_records)"
                ) from None
            if head is None:
                raise ConflictError(stream, expected_seq, await _head(conn, stream))
        return int(head)

    @asynccontextmanager
    async def _appending(self, epoch: int | None) -> AsyncIterator[asyncpg.Connection]:
        """A connection for an append; with an ``epoch``, in a transaction that holds the
        collector lock shared (tried until no collector sweeps)."""
        if epoch is None:
            async with self.connection() as conn:
                yield conn
            return
        while True:
            async with self.connection() as conn, conn.transaction():
                if await conn.fetchval(f"SELECT pg_try_advisory_xact_lock_shared({_SWEEP_KEY})"):
                    yield conn
                    return
            await anyio.sleep(_SWEEP_POLL)

    # -- what the garbage collector needs (see asyncart/_gc.py) --------------------------------

    async def epoch(self) -> int:
        """The collection epoch, once no collector sweeps (see ``Swept.epoch``)."""
        while True:
            async with self.connection() as conn:
                value = await conn.fetchval(
                    f"SELECT CASE WHEN pg_try_advisory_xact_lock_shared({_SWEEP_KEY}) "
                    "THEN (SELECT epoch FROM asyncart_epoch) END"
                )
            if value is not None:
                return int(value)
            await anyio.sleep(_SWEEP_POLL)

    @asynccontextmanager
    async def sweeping(self) -> AsyncIterator[None]:
        """Hold the collector lock exclusively for the block, on a connection of its own (it
        waits for the appends that hold it shared; those that come later wait for it)."""
        async with self.connection() as conn:
            await conn.execute(f"SELECT pg_advisory_lock({_SWEEP_KEY})")
            try:
                yield
            finally:
                with anyio.CancelScope(shield=True):
                    await conn.execute(f"SELECT pg_advisory_unlock({_SWEEP_KEY})")

    async def bump_epoch(self) -> int:
        """Move the epoch on (committed, so durable) inside :meth:`sweeping`; the new one."""
        async with self.connection() as conn:
            epoch: int = await conn.fetchval(
                "UPDATE asyncart_epoch SET epoch = epoch + 1 RETURNING epoch"
            )
        return epoch

    async def streams(self, prefix: str = "") -> list[str]:
        async with self.connection() as conn:
            rows = await _by_prefix(conn, "stream", prefix)
        return [row[0] for row in rows]

    async def notes(self, prefix: str) -> dict[str, bytes]:
        async with self.connection() as conn:
            rows = await _by_prefix(conn, "stream, note", prefix)
        return {row[0]: row[1] for row in rows}

    async def checkpoint(self, stream: str) -> bytes | None:
        async with self.connection() as conn:
            data = await conn.fetchval(
                "SELECT data FROM asyncart_checkpoints WHERE stream = $1", stream
            )
        return None if data is None else bytes(data)

    async def put_checkpoint(self, stream: str, data: bytes) -> None:
        check_entry_path(stream)
        async with self.connection() as conn:
            await conn.execute(
                "INSERT INTO asyncart_checkpoints (stream, data) VALUES ($1, $2) "
                "ON CONFLICT (stream) DO UPDATE SET data = excluded.data",
                stream,
                bytes(data),
            )


async def _version(conn: asyncpg.Connection) -> int | None:
    """The schema's version (None: no schema in the ``search_path``)."""
    if await conn.fetchval("SELECT to_regclass('asyncart_schema')") is None:
        return None
    version = await conn.fetchval("SELECT version FROM asyncart_schema")
    return None if version is None else int(version)


async def _append_small(
    conn: asyncpg.Connection, stream: str, records: list[bytes], expected: int, note: bytes
) -> int | None:
    """One statement (its own transaction): the new head, None if the stream moved."""
    args = (stream, expected, len(records), note, records)
    if expected == 0:
        head: int | None = await conn.fetchval(_WITH_RECORDS.format(_CREATED), *args)
        if head is not None:
            return head
    moved: int | None = await conn.fetchval(_WITH_RECORDS.format(_MOVED), *args)
    return moved


async def _append_copied(
    conn: asyncpg.Connection, stream: str, records: list[bytes], expected: int, note: bytes
) -> int | None:
    """The stream's row, then its records by COPY, in one transaction."""
    args = (stream, expected, len(records), note)
    async with conn.transaction():
        head: int | None = None
        if expected == 0:
            head = await conn.fetchval(_CREATED, *args)
        if head is None:
            head = await conn.fetchval(_MOVED, *args)
        if head is None:
            return None
        await conn.copy_records_to_table(
            "asyncart_records",
            records=((stream, seq, payload) for seq, payload in enumerate(records, expected)),
            columns=("stream", "seq", "payload"),
        )
    return head


async def _head(conn: asyncpg.Connection, stream: str) -> int:
    head = await conn.fetchval("SELECT head FROM asyncart_streams WHERE stream = $1", stream)
    return 0 if head is None else int(head)


async def _by_prefix(conn: asyncpg.Connection, columns: str, prefix: str) -> list[asyncpg.Record]:
    """The rows of the streams whose names start with ``prefix``, by name: a range scan of
    the primary key, from ``prefix`` to the first name past every name that starts so."""
    if "\x00" in prefix:  # no name holds one (PostgreSQL text cannot)
        return []
    sql = f"SELECT {columns} FROM asyncart_streams WHERE stream >= $1"
    end = _past_prefix(prefix)
    if end is None:
        rows: list[asyncpg.Record] = await conn.fetch(sql + " ORDER BY stream", prefix)
    else:
        rows = await conn.fetch(sql + " AND stream < $2 ORDER BY stream", prefix, end)
    return rows


def _past_prefix(prefix: str) -> str | None:
    """The least string greater than every string that starts with ``prefix`` (None: there
    is none). Code point order is UTF-8's byte order, which ``COLLATE "C"`` compares."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop()) + 1
        if 0xD800 <= last <= 0xDFFF:  # surrogates are no characters: skip to the next
            last = 0xE000
        if last <= 0x10FFFF:
            return "".join(chars) + chr(last)
    return None


def _missing(stream: str, seq: int, head: int) -> IntegrityError:
    return IntegrityError(
        f"stream {stream!r} seq {seq}: missing (its head is {head}: the record was deleted "
        "from asyncart_records; restore it from a backup)"
    )
