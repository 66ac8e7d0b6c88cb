"""Benchmark the PostgreSQL event log (medians over trials, on a real server).

    dsn=$(.ci/postgres.sh start /tmp/pgbench)
    python bench/bench_pg_log.py "$dsn" [--trials N]
    .ci/postgres.sh stop /tmp/pgbench

It measures, in a fresh schema of the DSN's database (dropped at the end):

1. appends/s of one 100-byte record into one stream (each append at the head it returned);
2. appends/s of one record into many streams: 1 writer, then 4 writers at once (the pool
   size), each record the first of a new stream;
3. records/s of one 10,000-record append (200 bytes each), and of one 64 MiB append
   (64 x 1 MiB);
4. how the records of one append are best inserted, 1 record and 10,000: an ``unnest``-ed
   array in one statement (the log's choice for small appends), ``executemany``, and
   ``copy_records_to_table`` (its choice for large ones), each in a transaction of its own.

Every commit waits for its fsync (the server's default ``synchronous_commit``), so (1) and (2)
are bound by the disk's flush latency more than by the CPU; ``--no-flush-wait`` shows what
they cost without that wait.

Seen here (2 shared cores, load average about 6 from other work, PostgreSQL 15 from
``.ci/postgres.sh``, medians of 5), default / ``--no-flush-wait``:

    1 record into one stream            342 / 1,594 appends/s
    1 record into new streams, 1 writer 418 / 2,402 appends/s
    ... 4 writers                        424 / 2,801 appends/s
    10,000 x 200 B in one append     62,587 / 169,958 records/s
    64 x 1 MiB in one append              43 / 49 MB/s
    insert 1 record:      unnest 0.72 ms, executemany 1.82 ms, COPY 2.16 ms
    insert 10,000:        unnest 240 ms,  executemany 455 ms,  COPY 162 ms

(``SET STORAGE EXTERNAL`` on payloads, to skip compressing them, made the 64 MiB append no
faster: it is bound by writing WAL and heap.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from asyncart._backends.pg_log import PostgresEventLog


def _in_schema(dsn: str, schema: str) -> str:
    parts = urlsplit(dsn)
    query = [*parse_qsl(parts.query), ("search_path", schema)]
    return urlunsplit(parts._replace(query=urlencode(query)))


async def _median(trials: int, run: Callable[[int], Awaitable[float]]) -> float:
    return statistics.median([await run(trial) for trial in range(trials)])


async def bench_log(dsn: str, trials: int) -> None:
    log = PostgresEventLog(dsn)
    await log.create()
    small = b"x" * 100
    async with log.held():

        async def one_stream(trial: int) -> float:
            n, seq, stream = 300, 0, f"b/artifacts/one{trial}"
            start = time.perf_counter()
            for _ in range(n):
                seq = await log.append(stream, [small], seq)
            return n / (time.perf_counter() - start)

        async def many_streams(trial: int, writers: int) -> float:
            n = 300

            async def writer(w: int) -> None:
                for i in range(n // writers):
                    await log.append(f"b/artifacts/m{trial}-{writers}-{w}-{i}", [small], 0)

            start = time.perf_counter()
            await asyncio.gather(*(writer(w) for w in range(writers)))
            return n // writers * writers / (time.perf_counter() - start)

        async def big(trial: int, count: int, size: int) -> float:
            records = [os.urandom(size) for _ in range(count)]
            start = time.perf_counter()
            await log.append(f"b/artifacts/big{trial}-{count}", records, 0)
            return count / (time.perf_counter() - start)

        print(f"1 record into one stream:      {await _median(trials, one_stream):9,.0f} appends/s")
        for writers in (1, 4):
            rate = await _median(trials, lambda t, w=writers: many_streams(t, w))
            print(f"1 record into new streams, {writers}w: {rate:9,.0f} appends/s")
        rate = await _median(trials, lambda t: big(t, 10_000, 200))
        print(f"10,000 x 200 B in one append:  {rate:9,.0f} records/s")
        rate = await _median(trials, lambda t: big(t, 64, 1 << 20))
        print(f"64 x 1 MiB in one append:      {rate * (1 << 20) / 1e6:9,.0f} MB/s")


async def bench_inserts(dsn: str, trials: int) -> None:
    conn = await asyncpg.connect(dsn)
    await conn.execute(
        'CREATE TABLE r (stream text COLLATE "C", seq bigint, payload bytea,'
        " PRIMARY KEY (stream, seq))"
    )

    async def unnest(rows: list[tuple[str, int, bytes]]) -> None:
        await conn.execute(
            "INSERT INTO r SELECT $1, $2 + o - 1, p"
            " FROM unnest($3::bytea[]) WITH ORDINALITY AS u(p, o)",
            rows[0][0],
            rows[0][1],
            [row[2] for row in rows],
        )

    async def executemany(rows: list[tuple[str, int, bytes]]) -> None:
        async with conn.transaction():
            await conn.executemany("INSERT INTO r VALUES ($1, $2, $3)", rows)

    async def copy(rows: list[tuple[str, int, bytes]]) -> None:
        async with conn.transaction():
            await conn.copy_records_to_table("r", records=rows)

    for count in (1, 10_000):
        payloads = [os.urandom(200) for _ in range(count)]
        for method in (unnest, executemany, copy):
            times = []
            for trial in range(max(trials, 20) if count == 1 else trials):
                rows = [
                    (f"{method.__name__}{count}-{trial}", seq, p) for seq, p in enumerate(payloads)
                ]
                start = time.perf_counter()
                await method(rows)
                times.append(time.perf_counter() - start)
            median = statistics.median(times)
            print(f"insert {count:6} x 200 B by {method.__name__:11}: {median * 1000:8.2f} ms")
    await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dsn", help="postgresql://USER@HOST:PORT/DATABASE (an admin's)")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument(
        "--no-flush-wait",
        action="store_true",
        help="synchronous_commit=off for these connections: what the appends cost without "
        "waiting for the disk (a crash may lose the last commits; not for real stores)",
    )
    args = parser.parse_args()
    schema = f"bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f"CREATE SCHEMA {schema}")
    dsn = _in_schema(args.dsn, schema)
    if args.no_flush_wait:
        dsn += "&synchronous_commit=off"
    try:
        await bench_log(dsn, args.trials)
        await bench_inserts(dsn, args.trials)
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
