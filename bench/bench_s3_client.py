"""Which S3 client for the S3 blob store: obstore (Rust, async) or aiobotocore, measured.

Against a local SeaweedFS (``.ci/seaweedfs.sh start DIR``, then ``eval`` what it prints; or
``$ASYNCART_TEST_S3`` and the AWS variables of any S3 server), each client uploads then
downloads 2,000 objects of 4 KiB (32 requests at once) and 2 files of 256 MiB (multipart,
16 MiB parts, 8 parts at once; downloads streamed to files). Each figure is the median of
3 trials; CPU seconds are this process's (user + system, the client's own threads included).

    eval "$(.ci/seaweedfs.sh start /tmp/s3bench)"
    .venv/bin/python bench/bench_s3_client.py [--small N] [--large-mib N] [--trials N]
    .ci/seaweedfs.sh stop /tmp/s3bench

obstore is not a dependency of asyncart (aiobotocore is): ``pip install obstore`` to run this.
A process that used obstore 0.12 may die of SIGABRT at interpreter exit (a race between its
Tokio threads and Python's finalization: 3 of 10 short runs here), after the table.

On this machine (2 cores, SeaweedFS 4.48 `weed mini` on loopback, load average ~30 from other
sessions, so read the ratios more than the rates), 2026-12-02:

    operation   client        MB/s  objects/s  CPU s
    small up    obstore        0.5      120.6   1.12
    small up    aiobotocore    0.2       55.2   7.15    obstore 2.19x
    small down  obstore        0.9      213.7   1.63
    small down  aiobotocore    0.3       72.0   6.81    obstore 2.97x
    large up    obstore       26.6        0.1   1.07
    large up    aiobotocore   21.8        0.1   2.32    obstore 1.22x
    large down  obstore      145.2        0.5   1.52
    large down  aiobotocore  125.9        0.5   0.99    obstore 1.15x

obstore is 2-3x faster for small objects (botocore spends ~3.5 ms of CPU per request, obstore
~0.6 ms) and even for large ones; asyncart uses aiobotocore all the same: an obstore process
aborting at exit would fail test runs and CLI commands at random, and obstore cannot make a
multipart completion conditional, abort or list multipart uploads itself, or presign parts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

SMALL_SIZE = 4 << 10
PART = 16 << 20
PARTS_AT_ONCE = 8
REQUESTS_AT_ONCE = 32
_CHUNK = 1 << 20


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _bounded(jobs: list[Callable[[], Awaitable[object]]], limit: int) -> None:
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[object]]) -> None:
        async with gate:
            await job()

    await asyncio.gather(*(one(job) for job in jobs))


class Obstore:
    name = "obstore"

    def __init__(self, endpoint: str, bucket: str) -> None:
        try:
            import obstore
            from obstore.store import S3Store
        except ImportError:
            sys.exit("this benchmark compares with obstore: pip install obstore")
        self.obs = obstore
        self.store = S3Store(
            bucket,
            endpoint=endpoint,
            access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
            secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
            region=os.environ.get("AWS_REGION", "us-east-1"),
            client_options={"allow_http": True, "pool_max_idle_per_host": "64"},
        )

    async def __aenter__(self) -> Obstore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def put(self, key: str, data: bytes) -> None:
        await self.obs.put_async(self.store, key, data, mode="create")

    async def get(self, key: str) -> bytes:
        return bytes(await (await self.obs.get_async(self.store, key)).bytes_async())

    async def put_file(self, key: str, path: Path) -> None:
        await self.obs.put_async(
            self.store, key, path, chunk_size=PART, max_concurrency=PARTS_AT_ONCE
        )

    async def get_file(self, key: str, dest: Path) -> None:
        result = await self.obs.get_async(self.store, key)
        with open(dest, "wb") as out:
            async for chunk in result.stream(min_chunk_size=_CHUNK):
                out.write(chunk)

    def presign(self, key: str) -> str:
        return self.obs.sign(self.store, "GET", key, timedelta(minutes=5))


class Aiobotocore:
    name = "aiobotocore"

    def __init__(self, endpoint: str, bucket: str) -> None:
        try:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session
        except ImportError:
            sys.exit("this benchmark compares with aiobotocore: pip install aiobotocore")
        self.bucket = bucket
        self._make = get_session().create_client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
            region_name=os.environ.get("AWS_REGION", "us-east-1"),
            # No CRC32 of every body (obstore computes none either): the same work on the wire.
            config=AioConfig(
                max_pool_connections=64,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    async def __aenter__(self) -> Aiobotocore:
        self.client = await self._make.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._make.__aexit__(None, None, None)

    async def put(self, key: str, data: bytes) -> None:
        await self.client.put_object(Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*")

    async def get(self, key: str) -> bytes:
        reply = await self.client.get_object(Bucket=self.bucket, Key=key)
        async with reply["Body"] as body:
            data: bytes = await body.read()
        return data

    async def put_file(self, key: str, path: Path) -> None:
        size = path.stat().st_size
        started = await self.client.create_multipart_upload(Bucket=self.bucket, Key=key)
        upload = started["UploadId"]
        etags: dict[int, str] = {}
        fd = os.open(path, os.O_RDONLY)

        async def part(number: int) -> None:
            data = os.pread(fd, PART, (number - 1) * PART)
            reply = await self.client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload, PartNumber=number, Body=data
            )
            etags[number] = reply["ETag"]

        try:
            count = -(-size // PART)
            await _bounded(
                [lambda n=n: part(n) for n in range(1, count + 1)],  # type: ignore[misc]
                PARTS_AT_ONCE,
            )
        finally:
            os.close(fd)
        parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
        await self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
        )

    async def get_file(self, key: str, dest: Path) -> None:
        reply = await self.client.get_object(Bucket=self.bucket, Key=key)
        with open(dest, "wb") as out:
            async with reply["Body"] as body:
                async for chunk in body.iter_chunks(_CHUNK):
                    out.write(chunk)


Client = Obstore | Aiobotocore


async def trial(
    client: Client, work: Path, small: list[bytes], large: list[Path]
) -> dict[str, Any]:
    """One upload and download of every object and file; seconds and CPU seconds of each."""
    run = uuid.uuid4().hex[:8]
    keys = [f"bench/{run}/small/{i:05d}" for i in range(len(small))]
    out: dict[str, Any] = {}

    async def timed(name: str, jobs: list[Callable[[], Awaitable[object]]], limit: int) -> None:
        cpu, start = _cpu(), time.perf_counter()
        await _bounded(jobs, limit)
        out[name] = (time.perf_counter() - start, _cpu() - cpu)

    await timed(
        "small up",
        [lambda k=k, d=d: client.put(k, d) for k, d in zip(keys, small, strict=True)],  # type: ignore[misc]
        REQUESTS_AT_ONCE,
    )
    got: list[bytes] = []

    async def get(key: str) -> None:
        got.append(await client.get(key))

    await timed("small down", [lambda k=k: get(k) for k in keys], REQUESTS_AT_ONCE)  # type: ignore[misc]
    assert sum(map(len, got)) == sum(map(len, small))
    big_keys = [f"bench/{run}/large/{i}" for i in range(len(large))]
    await timed(
        "large up",
        [lambda k=k, p=p: client.put_file(k, p) for k, p in zip(big_keys, large, strict=True)],  # type: ignore[misc]
        len(large),
    )
    dests = [work / f"down-{i}" for i in range(len(large))]
    await timed(
        "large down",
        [lambda k=k, d=d: client.get_file(k, d) for k, d in zip(big_keys, dests, strict=True)],  # type: ignore[misc]
        len(large),
    )
    for src, dest in zip(large, dests, strict=True):
        assert dest.stat().st_size == src.stat().st_size
        dest.unlink()
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=2000, help="objects of 4 KiB")
    parser.add_argument("--large-mib", type=int, default=256, help="size of each of 2 files")
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    endpoint = os.environ.get("ASYNCART_TEST_S3")
    if not endpoint:
        sys.exit('no S3 server: eval "$(.ci/seaweedfs.sh start DIR)" first')
    bucket = os.environ.get("ASYNCART_TEST_S3_BUCKET", "asyncart-test")
    small = [os.urandom(SMALL_SIZE) for _ in range(args.small)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        large = []
        for i in range(2):
            large.append(work / f"large-{i}")
            large[-1].write_bytes(os.urandom(args.large_mib << 20))
        results: dict[str, list[dict[str, Any]]] = {}
        for _ in range(args.trials):  # clients alternate: drift on the machine hits both
            for kind in (Obstore, Aiobotocore):
                async with kind(endpoint, bucket) as client:
                    results.setdefault(kind.name, []).append(
                        await trial(client, work, small, large)
                    )
    report(results, args.small, args.large_mib)


def report(results: dict[str, list[dict[str, Any]]], count: int, large_mib: int) -> None:
    """The table: per operation and client, median MB/s, objects/s and CPU seconds."""
    volume = {"small": (count * SMALL_SIZE, count), "large": (2 * large_mib << 20, 2)}
    print(f"{'operation':<12}{'client':<13}{'MB/s':>9}{'objects/s':>11}{'CPU s':>8}")
    for op in ("small up", "small down", "large up", "large down"):
        nbytes, objects = volume[op.split()[0]]
        rate: dict[str, float] = {}
        for name, trials in results.items():
            seconds = statistics.median(t[op][0] for t in trials)
            cpu = statistics.median(t[op][1] for t in trials)
            rate[name] = nbytes / seconds / 1e6
            print(f"{op:<12}{name:<13}{rate[name]:>9.1f}{objects / seconds:>11.1f}{cpu:>8.2f}")
        names = list(rate)
        print(f"{'':<12}{names[0]}/{names[1]} speed: {rate[names[0]] / rate[names[1]]:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
