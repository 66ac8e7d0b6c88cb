"""Manifest costs at scale: 1,000,000 synthetic entries, each step in a fresh process.

Usage: python bench/bench_manifest.py [N] (default 1,000,000). Set PYTHONPATH to measure another
checkout (e.g. the baseline). Prints, per step: seconds and peak RSS of that process; and the
resident bytes per entry of a materialized manifest.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import resource
import subprocess
import sys
import tempfile
import time

import blake3

from asyncart._diff import diff_manifests
from asyncart._domain.events import Entry, FilesAdded, FilesRemoved, encode_entries
from asyncart._domain.fold import replay
from asyncart._domain.manifest import Manifest


def path(i: int) -> str:
    return f"shard{i // 10_000:03d}/part{i % 7}/file-{i:07d}.bin"


def entries(n: int) -> list[Entry]:
    """``n`` entries, sorted by path (as a snapshot holds them)."""
    made = [
        Entry(path(i), blake3.blake3(i.to_bytes(8, "little")).hexdigest(), i % 4096)
        for i in range(n)
    ]
    return sorted(made, key=lambda e: e.path)


def changes(n: int) -> list[FilesAdded | FilesRemoved]:
    """30 files: 10 new, 10 replaced, 10 removed."""
    new = [Entry(f"new/{i}.bin", "ab" * 32, 7) for i in range(10)]
    replaced = [Entry(path(i * (n // 10)), "cd" * 32, 9) for i in range(10)]
    removed = [path(i * (n // 10) + 1) for i in range(10)]
    return [FilesAdded("d", new + replaced), FilesRemoved("d", removed)]


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load(snapshot: str) -> Manifest:
    with open(snapshot, "rb") as f:
        data = f.read()
    return Manifest.from_snapshot(data)


async def diff(a: Manifest, b: Manifest):
    result = diff_manifests(a, b)
    return await result if inspect.isawaitable(result) else result


def step(kind: str, snapshot: str, n: int) -> None:
    t = time.perf_counter()
    if kind == "open":
        with open(snapshot, "rb") as f:
            data = f.read()
        gc.collect()
        before = rss_now()
        t = time.perf_counter()
        m = Manifest.from_snapshot(data)
        took = time.perf_counter() - t
        del data
        gc.collect()
        per = (rss_now() - before + os.path.getsize(snapshot)) / len(m)
        t = time.perf_counter()
        _ = m.digest
        print(
            f"from_snapshot {took:.3f} s; digest {time.perf_counter() - t:.3f} s; "
            f"resident {per:.0f} B/entry; peak {peak_mib():.0f} MiB"
        )
    elif kind == "replay":
        m = load(snapshot)
        t = time.perf_counter()
        r = replay(m, changes(n))
        took = time.perf_counter() - t
        t = time.perf_counter()
        _ = r.digest
        print(
            f"replay 30 over {len(m)}: {took:.3f} s; its digest {time.perf_counter() - t:.3f} s;"
            f" peak {peak_mib():.0f} MiB"
        )
    elif kind == "diff":
        m = load(snapshot)
        r = replay(m, changes(n))
        t = time.perf_counter()
        d = asyncio.run(diff(m, r))
        print(f"diff: {time.perf_counter() - t:.3f} s ({d}); peak {peak_mib():.0f} MiB")
    elif kind == "to_snapshot":
        m = load(snapshot)
        t = time.perf_counter()
        data = m.to_snapshot()
        with open(snapshot, "rb") as f:
            same = f.read() == data
        print(
            f"to_snapshot {time.perf_counter() - t:.3f} s (byte-equal: {same}); "
            f"peak {peak_mib():.0f} MiB"
        )
    elif kind == "dict":
        t = time.perf_counter()
        m = Manifest({e.path: e for e in entries(n)})
        print(f"Manifest(dict of {n}) {time.perf_counter() - t:.3f} s; peak {peak_mib():.0f} MiB")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = os.path.join(tmp, "snapshot")
        with open(snapshot, "wb") as f:
            f.write(encode_entries(entries(n)))
        print(f"{n} entries, snapshot {os.path.getsize(snapshot) / 2**20:.0f} MiB")
        for kind in ["open", "replay", "diff", "to_snapshot", "dict"]:
            subprocess.run([sys.executable, __file__, "--step", kind, snapshot, str(n)], check=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--step"]:
        step(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
