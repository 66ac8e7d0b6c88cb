"""Distributed: several worker processes upsert parts of one version; a final run commits it.

    python examples/distributed.py [--store DIR] [--workers N]

Each worker process runs ``asyncart.init(project="demo", group=GROUP)`` and upserts its own
files into the pending draft named by the group. Nothing is visible as a version until the
final run calls ``finish_artifact``. Every execution uses a fresh group id, so it can be run
again and again; the workers write the same bytes each time, so from the second execution on
``finish_artifact`` finds the content identical to the latest version and returns that version.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import tempfile
import uuid
from pathlib import Path

import asyncart

NAME = "shards"


async def worker(n: int, group: str, store: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        part_dir = Path(tmp) / f"part-{n}"
        part_dir.mkdir()
        for i in range(3):
            (part_dir / f"rows-{i}.csv").write_text(f"worker,{n}\nshard,{i}\n" * (10 + i))
        (Path(tmp) / "stats.json").write_text(f'{{"worker": {n}, "rows": 33}}\n')

        async with asyncart.init(project="demo", group=group, job_type="shard", store=store) as run:
            part = asyncart.Artifact(NAME, "dataset")
            await part.add_dir(part_dir, name=f"part-{n}")
            await part.add_file(Path(tmp) / "stats.json", name=f"stats/worker-{n}.json")
            # distributed_id defaults to the run's group.
            await run.upsert_artifact(part)
            print(f"  worker {n} (run {run.id}): upserted {len(part.manifest)} files")


def worker_process(n: int, group: str, store: str | None) -> None:
    asyncio.run(worker(n, group, store))


async def latest_or_none(api: asyncart.Api) -> asyncart.Artifact | None:
    try:
        return await api.artifact(f"{NAME}:latest")
    except asyncart.NotFoundError:
        return None


async def finish(group: str, store: str | None) -> None:
    api = asyncart.Api(project="demo", store=store)
    before = await latest_or_none(api)
    print(
        f"before finish_artifact, {NAME}:latest is "
        f"{before.version if before else 'missing'} (the pending draft is not visible)"
    )
    async with asyncart.init(project="demo", group=group, job_type="merge", store=store) as run:
        # An empty Artifact: commit what the workers upserted; it could add files of its own.
        final = await run.finish_artifact(asyncart.Artifact(NAME, "dataset"), aliases=["merged"])
    print(f"finish_artifact returned {final.qualified_name}")
    print(f"  version : {final.version}")
    print(f"  digest  : {final.digest[:16]}...")
    print(f"  aliases : {', '.join(final.aliases)}")
    print(f"  files   : {len(final.manifest)} ({final.size} bytes), the union of all workers:")
    for path in sorted(final.manifest.entries):
        print(f"    {path}")
    if before is not None and before.version == final.version:
        print(f"  identical to the latest version: no new version, {final.version} returned")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store", help="store directory (default: $ASYNCART_STORE or ~/.local/share/asyncart)"
    )
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    args = parser.parse_args()

    group = f"merge-{uuid.uuid4().hex[:12]}"  # a fresh group (= distributed_id) per execution
    print(f"store: {args.store or 'the default store'}")
    print(f"group {group}: starting {args.workers} worker processes")
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=worker_process, args=(n, group, args.store)) for n in range(args.workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [n for n, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        raise SystemExit(f"workers {failed} failed")
    asyncio.run(finish(group, args.store))


if __name__ == "__main__":
    main()
