"""Client CPU per small file: the S3 blob store's upload beside a plain aiobotocore client.

On a 2-core machine that also runs the S3 server, an ingest of many small files is CPU-bound,
so what the client spends per file beyond the plain client's PUT is what it loses in
throughput. Each trial uploads the same N files of 4 KiB to fresh prefixes, both ways, in an
order that alternates with the trial, and deletes them after; CPU is this process's (user +
system, its threads included), over the upload only (hashing for the digests comes before).

    eval "$(.ci/seaweedfs.sh start /tmp/s3bench)"; export AWS_ENDPOINT_URL=$ASYNCART_TEST_S3
    python bench/bench_s3_small_cpu.py s3://BUCKET/PREFIX [--files N] [--trials N]

2026-12-03, 2,000 files, this machine under load 4-7 (other work), 4 trials each:

    before d95a4ff (a worker-thread hop per file): store 2.25-2.66 ms, plain 1.79-1.98 ms
    after (a hop per READ_FILES files):           store 1.58-1.97 ms, plain 1.55-1.68 ms
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

import blake3

sys.path.insert(0, str(Path(__file__).parent))
from bench_pg_s3 import FILES_AT_ONCE, Plain, bounded

from asyncart._backends.base import UploadItem
from asyncart._backends.s3_blobs import S3BlobStore
from asyncart._transfer import upload


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def trial(url: str, paths: list[Path], items: list[UploadItem], n: int) -> dict[str, float]:
    """Milliseconds of CPU per file, each way."""
    run = uuid.uuid4().hex[:8]
    out: dict[str, float] = {}
    async with Plain(url) as plain:
        prefix = f"{plain.prefix}/{run}".lstrip("/")
        for way in ("plain", "store") if n % 2 == 0 else ("store", "plain"):
            if way == "plain":
                cpu = _cpu()
                jobs = [lambda p=p: plain.put(f"{prefix}/p/{p.name}", p) for p in paths]
                await bounded(jobs, FILES_AT_ONCE)  # type: ignore[arg-type]
            else:
                store = S3BlobStore.from_url(f"s3://{plain.bucket}/{prefix}/s")
                async with store.held():  # the client is made before the clock starts
                    cpu = _cpu()
                    await upload(store, items)
            out[way] = (_cpu() - cpu) / len(paths) * 1e3
        await plain.clear(f"{prefix}/")
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="s3://BUCKET/PREFIX to upload under (a fresh prefix a trial)")
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--trials", type=int, default=4)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="asyncart-small-cpu-"))
    paths, items = [], []
    for i in range(args.files):
        data = os.urandom(4096)
        path = root / f"f{i:06}.bin"
        path.write_bytes(data)
        paths.append(path)
        items.append(UploadItem(str(path), blake3.blake3(data).hexdigest(), len(data)))
    results = [await trial(args.url, paths, items, n) for n in range(args.trials)]
    print(f"client CPU per 4 KiB file, {args.files} files, median of {args.trials}:")
    for way in ("plain", "store"):
        values = [r[way] for r in results]
        low, high = min(values), max(values)
        print(f"  {way:6} {statistics.median(values):.3f} ms  ({low:.3f}-{high:.3f})")
    print(f"data: {root} (delete it when done)")


if __name__ == "__main__":
    asyncio.run(main())
