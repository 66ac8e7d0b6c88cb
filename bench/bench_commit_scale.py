"""A large artifact end to end: N real tiny files in a local store, each step a fresh process.

Usage (PYTHONPATH picks the checkout to measure; the store format is the same for both)::

    python bench/bench_commit_scale.py make SRC 1000000   # the files (about 30 s)
    python bench/bench_commit_scale.py commit SRC STORE   # add_dir + save: v0
    python bench/bench_commit_scale.py open STORE         # Api.artifact('big:latest')
    python bench/bench_commit_scale.py incr SRC STORE     # new_draft, -10 +20 files, save
    python bench/bench_commit_scale.py diff STORE         # await v0.diff(v1)

Each prints its time, the peak RSS, and the most CPU the loop thread spent between two 5 ms
heartbeats (CPU, not wall clock: other processes do not inflate it).
"""

import asyncio
import inspect
import os
import resource
import sys
import time


def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make(src, n):
    for i in range(n):
        d = os.path.join(src, f"shard{i // 10_000:03d}", f"part{i % 7}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"file-{i:07d}.bin"), "wb") as f:
            f.write(i.to_bytes(8, "little"))
    os.makedirs(os.path.join(src + "-extra"), exist_ok=True)
    for i in range(20):
        with open(os.path.join(src + "-extra", f"x{i}.bin"), "wb") as f:
            f.write(b"extra %d" % i)


async def beat(out):
    import anyio

    last = time.thread_time()
    while True:
        await anyio.sleep(0.005)
        now = time.thread_time()
        out.append(now - last)
        last = now


async def main(kind, *args):
    import anyio

    import asyncart  # noqa: F401 (imported before the heartbeat starts)

    busy = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(beat, busy)
        await anyio.lowlevel.checkpoint()
        await step(kind, *args)
        tg.cancel_scope.cancel()
    print(
        f"  most loop-thread CPU between 5 ms beats: {1000 * max(busy, default=0):.1f} ms "
        f"({len(busy)} beats)"
    )


async def step(kind, *args):
    import asyncart

    t = time.perf_counter()
    if kind == "commit":
        src, store = args
        a = asyncart.Artifact("big", "dataset")
        await a.add_dir(src)
        t1 = time.perf_counter()
        saved = await a.save(store=store)
        print(
            f"commit {len(saved.manifest)} files: add_dir {t1 - t:.2f} s, "
            f"save {time.perf_counter() - t1:.2f} s; peak {peak():.0f} MiB"
        )
    elif kind == "incr":
        src, store = args
        api = asyncart.Api(store=store, project="uncategorized")
        v0 = await api.artifact("big:latest")
        t = time.perf_counter()
        off = int(v0.version[1:]) + 1  # each run removes other files and adds new ones
        extra = f"{src}-extra-{off}"
        os.makedirs(extra, exist_ok=True)
        for i in range(20):
            with open(os.path.join(extra, f"x{i}.bin"), "wb") as f:
                f.write(b"extra %d %d" % (off, i))
        t = time.perf_counter()
        d = v0.new_draft()
        paths = [
            f"shard{j // 10_000:03d}/part{j % 7}/file-{j:07d}.bin"
            for j in range(off, 1_000_000, 100_000)
        ]
        for p in paths:
            d.remove(p)
        await d.add_dir(extra, f"extra{off}")  # 20 new files
        t1 = time.perf_counter()
        v1 = await d.save()
        print(
            f"incremental {v1.version} (-10 +20): edit {t1 - t:.3f} s, "
            f"save {time.perf_counter() - t1:.3f} s; peak {peak():.0f} MiB"
        )
    elif kind == "open":
        (store,) = args
        api = asyncart.Api(store=store, project="uncategorized")
        a = await api.artifact("big:latest")
        print(
            f"open {a.qualified_name} ({len(a.manifest)} files) "
            f"{time.perf_counter() - t:.2f} s; peak {peak():.0f} MiB"
        )
    elif kind == "diff":
        (store,) = args
        api = asyncart.Api(store=store, project="uncategorized")
        a, b = await api.artifact("big:v0"), await api.artifact("big:v1")
        t = time.perf_counter()
        d = a.diff(b)
        d = await d if inspect.isawaitable(d) else d
        print(f"diff v0 v1: {d} {time.perf_counter() - t:.3f} s; peak {peak():.0f} MiB")


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], int(sys.argv[3]))
    else:
        t = time.perf_counter()
        asyncio.run(main(*sys.argv[1:]))
        print(f"  (process wall {time.perf_counter() - t:.2f} s after interpreter start)")
