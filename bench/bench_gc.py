"""Benchmark garbage collection on a local store of many blobs (issue 12).

    python bench/bench_gc.py [--dir DIR] [--blobs N] [--trials T]

Builds, once, in a fresh folder under DIR: a store of N blobs (default 1,000,000; 16 bytes of
unique content each, written straight into ``blobs/``), half of them referenced by one version
of one artifact, the other half by nothing (written two hours ago). Then, each in a fresh
process, ``T`` times: ``asyncart gc --dry-run --grace 1h`` (marks the version, lists every
blob, counts what would go) beside ``find blobs -type f`` (a listing of the same files, the
floor of any collector that looks at each blob), with each one's wall time and peak RSS
(``wait4``; the store is built in another child, so that figure is each command's own); then
one real ``asyncart gc`` that removes the unreferenced half (last: mass deletes slow this
disk down for minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import blake3


def build(root: Path, count: int) -> None:
    from asyncart._backends.local import LocalStore
    from asyncart._domain.events import Entry
    from asyncart._domain.manifest import Manifest
    from asyncart._repository import DraftSpec, Repository, Transfer, chunk_entries

    store = LocalStore(root)
    asyncio.run(store.create())
    old = time.time() - 7200
    entries = []
    for i in range(count):
        data = i.to_bytes(16, "little")
        digest = blake3.blake3(data).hexdigest()
        folder = root / "blobs" / digest[:2]
        folder.mkdir(exist_ok=True)
        path = folder / digest
        path.write_bytes(data)
        if i % 2:
            os.utime(path, (old, old))
        else:
            entries.append(Entry(f"d{i // 2000:04}/f{i:07}", digest, 16))
    os.sync()
    manifest = Manifest({e.path: e for e in entries})
    spec = DraftSpec("half", "dataset", None, chunk_entries(entries), manifest, [], None, None)

    async def commit() -> None:
        await Repository(store).commit("bench", spec, [], "user:bench", Transfer(8, None))

    asyncio.run(commit())


def timed(command: list[str]) -> tuple[float, int, bytes]:
    """Wall seconds, peak RSS (bytes) and stdout of ``command``."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE)
    out = child.stdout.read() if child.stdout else b""
    _, status, usage = os.wait4(child.pid, 0)
    if status:
        raise SystemExit(f"{command} failed: {status}")
    return time.perf_counter() - start, usage.ru_maxrss * 1024, out


def main() -> None:
    if sys.argv[1:2] == ["--build"]:
        return build(Path(sys.argv[2]), int(sys.argv[3]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp/bench-gc")
    parser.add_argument("--blobs", type=int, default=1_000_000)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    root = Path(args.dir) / f"store-{args.blobs}-{os.getpid()}"  # fresh: never rm -rf here
    root.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # built in a child: this process stays small, so each measured child's peak RSS is its own
    subprocess.run([sys.executable, __file__, "--build", str(root), str(args.blobs)], check=True)
    print(f"built {args.blobs:,} blobs in {time.perf_counter() - start:.0f} s", flush=True)
    gc = [sys.executable, "-m", "asyncart", "--store", str(root), "--json", "gc"]
    rows: dict[str, list[tuple[float, int]]] = {"gc --dry-run": [], "find blobs -type f": []}
    report = {}
    for _ in range(args.trials):
        seconds, rss, out = timed([*gc, "--dry-run"])
        rows["gc --dry-run"].append((seconds, rss))
        report = json.loads(out)
        seconds, rss, _ = timed(["find", str(root / "blobs"), "-type", "f"])
        rows["find blobs -type f"].append((seconds, rss))
    seconds, rss, out = timed(gc)
    rows["gc (removes half)"] = [(seconds, rss)]
    removed = json.loads(out)
    base = statistics.median(s for s, _ in rows["find blobs -type f"])
    print(f"\n{args.blobs:,} blobs, half referenced by one version; medians of {args.trials}")
    print(f"{'what':<22} {'seconds':>8} {'x find':>7} {'peak RSS MiB':>13}")
    for name, trials in rows.items():
        s = statistics.median(t for t, _ in trials)
        m = statistics.median(r for _, r in trials) / 2**20
        print(f"{name:<22} {s:>8.1f} {s / base:>7.1f} {m:>13.0f}")
    print(
        f"dry run would remove {report['blobs_removed']:,}; gc removed {removed['blobs_removed']:,}"
    )


if __name__ == "__main__":
    main()
