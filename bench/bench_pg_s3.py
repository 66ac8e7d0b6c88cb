"""Benchmark the PostgreSQL + S3 store against a plain aiobotocore client (the scale-out issue).

    dsn=$(bash .ci/postgres.sh start /tmp/pgs3)
    eval "$(bash .ci/seaweedfs.sh start /tmp/s3)"
    .venv/bin/python bench/bench_pg_s3.py "$dsn?blobs=s3://asyncart-test/bench" [--quick]
    bash .ci/seaweedfs.sh stop /tmp/s3; bash .ci/postgres.sh stop /tmp/pgs3

The S3 endpoint and credentials come from the AWS variables (``AWS_ENDPOINT_URL`` ...), as for
the store itself. Each figure is the median of ``--trials`` (3); every trial of every way of
moving the bytes writes to a prefix of its own (``PREFIX/<run>-<trial>-<way>``), so nothing is
deduplicated against an earlier trial. In one run:

1. Ingest of the small set (20,000 x 4 KiB) and of the large set (4 x 256 MiB): ``add_dir``
   (hashing) plus ``save(store=LOCATION)`` directly, and the same through ``asyncart serve
   --store LOCATION`` on loopback (a child process, a write token) twice: as served by
   default (large blobs by presigned URL, straight between the client and S3) and with
   ``--no-presign`` (every byte relayed by the server), beside a plain aiobotocore
   client that PUTs the same files with the library's concurrency (the baseline): 8 files at
   once (``FILES_AT_ONCE``), files of 16 MiB or more as multipart uploads of 8 MiB parts, 4 parts
   of a file at once, at most 64 MiB of parts in memory (the S3 blob store's limits).
2. Download of both sets, ``Artifact.download`` directly and through both servers, beside the
   plain client's GETs of the same objects to files, 8 at once.
3. Appends/s of one small record into one stream and into new streams (one writer), through
   :class:`PostgresEventLog` (``bench/bench_pg_log.py`` measures more of the log).
4. CPU seconds per GB ingested and downloaded through the server (``/proc/PID/stat``: the
   server process's utime + stime), presigned beside ``--no-presign``, and the client's; the
   peak RSS of this process for the direct large ingest.

The source files are written once, before any clock starts; downloads go to new folders (no
folder of many files is deleted: that slows file creation on this disk for minutes). The data
directory is printed at the end.

Seen here (2 shared cores, the issue's sizes run as ``--only small`` then ``--only large``,
medians of 3, 2026-12-03; the full table is in the README), as a share of the plain client's
throughput: small ingest 65% direct / 101% server / 90% ``--no-presign``, small download 77% /
76% / 80%; large ingest 97% / 74% / 66%, large download 74% / 121% / 74%; server CPU per GB of
large files 1.9 s ingested presigned against 3.0 s relayed, 0.0 s downloaded against 1.1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncart
from asyncart._backends.http_blobs import FILES_AT_ONCE
from asyncart._backends.pg_log import PostgresEventLog
from asyncart._backends.pg_s3 import split_location
from asyncart._backends.s3_blobs import BUFFER_BYTES, PART_SIZE, PART_THRESHOLD, PARTS_AT_ONCE

KIB, MIB = 1 << 10, 1 << 20
TICK = os.sysconf("SC_CLK_TCK")
WAYS = ("plain", "direct", "server", "relay")
"""``server``: presigned URLs for large blobs (the default); ``relay``: ``serve --no-presign``."""
SERVED = ("server", "relay")


@dataclass
class Sizes:
    small_count: int
    small_size: int
    large_count: int
    large_size: int
    appends: int


FULL = Sizes(20_000, 4 * KIB, 4, 256 * MIB, 300)
QUICK = Sizes(50, 4 * KIB, 2, 20 * MIB, 10)


def write_files(root: Path, count: int, size: int) -> list[Path]:
    """``count`` files of random bytes, 1,000 to a folder."""
    paths = []
    for i in range(count):
        sub = root / f"d{i // 1000:03}"
        sub.mkdir(parents=True, exist_ok=True)
        paths.append(sub / f"f{i:06}.bin")
        paths[-1].write_bytes(os.urandom(size))
    return paths


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM starts again from VmRSS


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / KIB
    return float("nan")


def with_prefix(location: str, suffix: str) -> str:
    """The location with ``suffix`` added to its blob prefix: a fresh, empty place for blobs."""
    dsn, blobs = split_location(location)
    return f"{dsn}{'&' if '?' in dsn else '?'}blobs={blobs.rstrip('/')}/{suffix}"


class Plain:
    """The baseline: aiobotocore as a user would drive it, with the library's concurrency."""

    def __init__(self, blobs_url: str) -> None:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        parts = urlsplit(blobs_url)
        self.bucket, self.prefix = parts.netloc, parts.path.strip("/")
        self._make = get_session().create_client(
            "s3",
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ["AWS_ENDPOINT_URL"],
            region_name=os.environ.get("AWS_REGION", "us-east-1"),
            config=AioConfig(
                s3={"addressing_style": "path"},
                max_pool_connections=32,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        self.parts = asyncio.Semaphore(max(1, BUFFER_BYTES // PART_SIZE))

    async def __aenter__(self) -> Plain:
        self.client = await self._make.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._make.__aexit__(None, None, None)

    def key(self, run: str, path: Path) -> str:
        return f"{self.prefix}/{run}/{path.parent.parent.name}/{path.parent.name}/{path.name}"

    async def put(self, key: str, path: Path) -> None:
        size = path.stat().st_size
        if size < PART_THRESHOLD:
            await self.client.put_object(
                Bucket=self.bucket, Key=key, Body=path.read_bytes(), IfNoneMatch="*"
            )
            return
        started = await self.client.create_multipart_upload(Bucket=self.bucket, Key=key)
        upload, etags = started["UploadId"], {}
        with open(path, "rb") as f:

            async def part(number: int) -> None:
                async with self.parts:
                    data = os.pread(f.fileno(), PART_SIZE, (number - 1) * PART_SIZE)
                    reply = await self.client.upload_part(
                        Bucket=self.bucket, Key=key, UploadId=upload, PartNumber=number, Body=data
                    )
                etags[number] = reply["ETag"]

            await bounded(
                [lambda n=n: part(n) for n in range(1, -(-size // PART_SIZE) + 1)], PARTS_AT_ONCE
            )  # type: ignore[misc]
        done = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
        await self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": done}
        )

    async def clear(self, prefix: str) -> int:
        """Delete every object under ``prefix`` (a trial's): a long run must not fill the disk."""
        deleted = 0
        pages = self.client.get_paginator("list_objects_v2")
        async for page in pages.paginate(Bucket=self.bucket, Prefix=prefix):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                await self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})
                deleted += len(keys)
        return deleted

    async def get(self, key: str, dest: Path) -> None:
        reply = await self.client.get_object(Bucket=self.bucket, Key=key)
        with open(dest, "wb") as out:
            async with reply["Body"] as body:
                async for chunk in body.iter_chunks(4 * MIB):
                    out.write(chunk)


async def bounded(jobs: list[Callable[[], Awaitable[object]]], limit: int) -> None:
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[object]]) -> None:
        async with gate:
            await job()

    await asyncio.gather(*(one(job) for job in jobs))


class Server:
    """``asyncart serve --store LOCATION`` on a free loopback port, and a write token."""

    def __init__(self, location: str, project: str, *extra: str) -> None:
        cli = [sys.executable, "-m", "asyncart"]
        made = subprocess.run(
            [*cli, "token", "create", "--store", location, "--project", project, "--write"],
            capture_output=True,
            text=True,
        )
        if made.returncode:
            raise SystemExit(f"asyncart token create failed: {made.stderr.strip()}")
        self.token = made.stdout.strip().split()[-1]
        log = open(os.environ.get("BENCH_SERVER_LOG", os.devnull), "a")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*cli, "serve", "--store", location, "--port", "0", *extra],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "listening on" in line, line
        self.url = line.split()[-1]

    def cpu(self) -> float:
        return _proc_cpu(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)


async def one_trial(
    location: str, root: Path, sets: dict[str, list[Path]], n: int, run: str
) -> dict[str, float]:
    """Every way of moving each set, up then down, in an order that rotates with the trial."""
    out: dict[str, float] = {}
    ways = WAYS[n % len(WAYS) :] + WAYS[: n % len(WAYS)]
    places = {way: with_prefix(location, f"{run}-{n}-{way}") for way in WAYS}
    servers = {
        "server": Server(places["server"], f"bench{n}"),
        "relay": Server(places["relay"], f"bench{n}", "--no-presign"),
    }
    saved: dict[tuple[str, str], asyncart.Artifact] = {}
    try:
        async with (
            Plain(split_location(places["plain"])[1]) as plain,
            asyncart.HttpStore(servers["server"].url, servers["server"].token) as presigned,
            asyncart.HttpStore(servers["relay"].url, servers["relay"].token) as relayed,
        ):
            remotes = {"server": presigned, "relay": relayed}
            for kind, paths in sets.items():
                src = paths[0].parent.parent
                for way in ways:
                    cpu, server_cpu = _cpu(), _served_cpu(servers, way)
                    if kind == "large" and way == "direct":
                        _reset_peak_rss()
                    start = time.perf_counter()
                    if way == "plain":
                        jobs = [lambda p=p: plain.put(plain.key(run, p), p) for p in paths]
                        await bounded(jobs, FILES_AT_ONCE)  # type: ignore[arg-type]
                    else:
                        artifact = asyncart.Artifact(kind, "dataset")
                        await artifact.add_dir(src)
                        store: Any = remotes.get(way, places["direct"])
                        saved[kind, way] = await artifact.save(project=f"bench{n}", store=store)
                    out[f"{kind} up {way}"] = time.perf_counter() - start
                    if kind == "large" and way == "direct":
                        out["large up direct rss"] = _peak_rss_mib()
                    if way in SERVED:
                        out[f"{kind} up {way} cpu"] = _served_cpu(servers, way) - server_cpu
                        out[f"{kind} up {way} client cpu"] = _cpu() - cpu
            for kind, paths in sets.items():
                for way in ways:
                    dest = root / f"down-{run}-{n}-{kind}-{way}"
                    server_cpu = _served_cpu(servers, way)
                    start = time.perf_counter()
                    if way == "plain":
                        for sub in {p.parent.name for p in paths}:
                            (dest / sub).mkdir(parents=True)
                        jobs = [
                            lambda p=p, d=dest: plain.get(
                                plain.key(run, p), d / p.parent.name / p.name
                            )
                            for p in paths
                        ]
                        await bounded(jobs, FILES_AT_ONCE)  # type: ignore[arg-type]
                    else:
                        await saved[kind, way].download(dest)
                    out[f"{kind} down {way}"] = time.perf_counter() - start
                    if way in SERVED:
                        out[f"{kind} down {way} cpu"] = _served_cpu(servers, way) - server_cpu
                    got = sum(1 for p in dest.rglob("*.bin"))
                    assert got == len(paths), (kind, way, got)
                    if kind == "large":
                        for p in dest.rglob("*.bin"):
                            p.unlink()  # a few large files: cheap to delete, and 1 GiB each way
            # What this trial wrote, every way (the S3 server reclaims the space when it
            # compacts: SeaweedFS's vacuum).
            base = urlsplit(split_location(location)[1]).path.strip("/")
            await plain.clear(f"{base}/{run}-{n}-")
    finally:
        for server in servers.values():
            server.stop()
    return out


def _served_cpu(servers: dict[str, Server], way: str) -> float:
    """CPU seconds of the server process ``way`` goes through so far (0 for the others)."""
    return servers[way].cpu() if way in servers else 0.0


async def appends(location: str, count: int, n: int, run: str) -> dict[str, float]:
    """Appends/s of one 100-byte record: into one stream, and each into a new stream."""
    log = PostgresEventLog(split_location(location)[0])
    await log.create()
    record = b"x" * 100
    async with log.held():
        seq, stream = 0, f"bench/artifacts/{run}-{n}-one"
        start = time.perf_counter()
        for _ in range(count):
            seq = await log.append(stream, [record], seq)
        one = count / (time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(count):
            await log.append(f"bench/artifacts/{run}-{n}-new{i}", [record], 0)
        many = count / (time.perf_counter() - start)
    return {"appends one": one, "appends new": many}


def rows(results: list[dict[str, float]], sizes: Sizes) -> list[tuple[str, str, str, str]]:
    """(measurement, value, baseline, ratio) of the medians over the trials."""
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    volume = {
        "small": (sizes.small_count, sizes.small_count * sizes.small_size),
        "large": (sizes.large_count, sizes.large_count * sizes.large_size),
    }
    volume = {kind: v for kind, v in volume.items() if f"{kind} up plain" in med}
    out = []
    names = {"direct": "direct", "server": "server", "relay": "server --no-presign"}
    for kind, (files, nbytes) in volume.items():
        label = f"{files:,} x {_size(nbytes // files)}"
        for op in ("up", "down"):
            base = med[f"{kind} {op} plain"]
            plain = f"{nbytes / base / 1e6:.1f} MB/s, {files / base:,.1f} files/s"
            for way in ("direct", "server", "relay"):
                t = med[f"{kind} {op} {way}"]
                what = f"{'ingest' if op == 'up' else 'download'} {label}, {names[way]}"
                value = f"{nbytes / t / 1e6:.1f} MB/s, {files / t:,.1f} files/s"
                out.append((what, value, f"plain aiobotocore: {plain}", f"{base / t:.0%}"))
    for kind, (_, nbytes) in volume.items():
        gb = nbytes / 1e9
        for op, done in (("up", "ingested"), ("down", "downloaded")):
            relayed = med[f"{kind} {op} relay cpu"] / gb
            presigned = med[f"{kind} {op} server cpu"] / gb
            out.append(
                (
                    f"server CPU per GB {done} through it, {kind}, presigned",
                    f"{presigned:.1f} s",
                    f"--no-presign: {relayed:.1f} s",
                    f"{presigned / relayed:.0%}" if relayed else "",
                )
            )
        client = med[f"{kind} up server client cpu"]
        out.append(
            (
                f"client CPU per GB ingested through the server, {kind}",
                f"{client / gb:.1f} s",
                "",
                "",
            )
        )
    if "large" in volume:
        rss = f"{med['large up direct rss']:.0f} MiB"
        out.append(("peak RSS of the client, direct large ingest", rss, "", ""))
    out.append(("appends/s, 1 record into one stream", f"{med['appends one']:,.0f}", "", ""))
    out.append(("appends/s, 1 record into a new stream each", f"{med['appends new']:,.0f}", "", ""))
    return out


def _size(n: int) -> str:
    return f"{n // MIB} MiB" if n >= MIB else f"{n // KIB} KiB"


def table(lines: list[tuple[str, str, str, str]]) -> str:
    head = ("measurement", "value", "baseline", "ratio")
    body = [head, ("---",) * 4, *lines]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in body)


async def run_all(
    location: str, root: Path, sizes: Sizes, trials: int, only: str | None
) -> list[dict[str, float]]:
    sets = {}
    if only in (None, "small"):
        sets["small"] = write_files(root / "small", sizes.small_count, sizes.small_size)
    if only in (None, "large"):
        sets["large"] = write_files(root / "large", sizes.large_count, sizes.large_size)
    run = uuid.uuid4().hex[:8]
    results = []
    for n in range(trials):
        result = await one_trial(location, root, sets, n, run)
        result |= await appends(location, sizes.appends, n, run)
        results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("location", help="postgresql://...?blobs=s3://BUCKET/PREFIX")
    parser.add_argument("--dir", help="where to put the data (default: a new temp directory)")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--small", type=int, help="number of 4 KiB files (default 20,000)")
    parser.add_argument("--large-mib", type=int, help="MiB of each of the 4 large files (256)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one trial")
    parser.add_argument("--only", choices=("small", "large"), help="move only this set")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.small:
        sizes.small_count = args.small
    if args.large_mib:
        sizes.large_size = args.large_mib * MIB
    root = Path(args.dir or tempfile.mkdtemp(prefix="asyncart-bench-pg-s3-"))
    load = os.getloadavg()
    results = asyncio.run(
        run_all(args.location, root, sizes, 1 if args.quick else args.trials, args.only)
    )
    load_after = os.getloadavg()
    print(table(rows(results, sizes)))
    print(
        f"\nload average: {load[0]:.2f} before, {load_after[0]:.2f} after ({os.cpu_count()} cores)"
    )
    print(f"data: {root} (delete it when done)")


if __name__ == "__main__":
    main()
