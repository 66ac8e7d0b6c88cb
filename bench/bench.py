"""Benchmark asyncart against the limits of this machine.

    python bench/bench.py [--dir DIR] [--trials N] [--quick]

What it measures (medians over N trials; ratios against baselines measured in the same run):

1. Ingest of 20,000 x 4 KiB random files into a fresh local store (``add_dir`` + ``save``):
   files/s and MB/s, against ``cp -r SRC DEST && sync`` of the same files (the machine's
   limit for a durable copy).
2. Ingest of 4 x 256 MiB random files: MB/s, against the same baseline.
3. A 30-file incremental change (``new_draft``, remove 10, replace 10, add 10, ``save``) on the
   20,000-file artifact and on a 2,000-file one: the time should not grow with the artifact.
4. Reading ``v0``, ``v1``, ``v500`` and ``latest`` of a chain of 1,000 small incremental
   versions (on a 2,000-file artifact), each in a fresh process, manifest included.
5. The longest event-loop stall seen by a 1 ms heartbeat task during ingests 1 and 2, and the
   longest single loop step (code running on the loop itself, without waits for the GIL or a
   CPU); baseline: the same in an idle loop while the cp of 1 and 2 runs (the machine's noise).
6. Peak RSS of the process doing ingest 1.

Plus raw BLAKE3 hashing speed of the large files, for context.

How: every asyncart ingest runs in a fresh child process (this script with ``--worker``) that
times itself. asyncart and cp trials are interleaved (large writes on this disk are bimodal),
and every measurement is preceded by an untimed ``sync``. Each trial writes to fresh folders,
and only its copies of the large files are deleted after it (a few files; deleting tens of
thousands makes file creation slow for minutes on this disk, and a nearly full disk slows
writes too). The data directory is printed at the end; delete it when done.

``--quick`` uses tiny sizes and one trial, so that a test can run the whole script in seconds.
MB = 10^6 bytes; MiB = 2^20 bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import blake3

import asyncart

PROJECT = "bench"
KIB, MIB = 1 << 10, 1 << 20
PER_DIR = 1000  # small files are spread over folders of this many


@dataclass(frozen=True)
class Sizes:
    small_files: int = 20_000
    small_size: int = 4 * KIB
    large_files: int = 4
    large_size: int = 256 * MIB
    medium_files: int = 2_000  # the second artifact for incremental changes, and the chain's base
    changes: int = 10  # an incremental change removes, replaces and adds this many files each
    increments: int = 5  # incremental changes timed per artifact and trial
    chain: int = 1_000  # incremental versions in the chain read by measurement 4
    reads: int = 7  # fresh-process reads per version of the chain


QUICK = Sizes(
    small_files=500,
    large_files=2,
    large_size=8 * MIB,
    medium_files=200,
    increments=2,
    chain=50,
    reads=1,
)


# -- data -----------------------------------------------------------------------------------


def write_random_files(root: Path, count: int, size: int, rng: random.Random) -> None:
    """``count`` files of ``size`` random bytes, in folders of PER_DIR files."""
    for i in range(count):
        folder = root / f"d{i // PER_DIR:03d}"
        if i % PER_DIR == 0:
            folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"f{i:06d}.bin", "wb") as f:
            for done in range(0, size, 8 * MIB):
                f.write(rng.randbytes(min(8 * MIB, size - done)))


def make_data(root: Path, sizes: Sizes) -> dict[str, Path]:
    """The read-only source trees every trial copies or ingests."""
    rng = random.Random(20240601)
    data = {
        "small": root / "data" / "small",
        "large": root / "data" / "large",
        "medium": root / "data" / "medium",
        "pool": root / "data" / "pool",
    }
    write_random_files(data["small"], sizes.small_files, sizes.small_size, rng)
    write_random_files(data["large"], sizes.large_files, sizes.large_size, rng)
    write_random_files(data["medium"], sizes.medium_files, sizes.small_size, rng)
    write_random_files(data["pool"], 64, sizes.small_size, rng)  # contents for the chain's edits
    sync()
    return data


def sync() -> None:
    subprocess.run(["sync"], check=True)


# -- baselines ------------------------------------------------------------------------------


def blake3_speeds(large: Path) -> tuple[float, float]:
    """GB/s of BLAKE3 (all cores) over the large files: read from the page cache, and in memory."""
    files = sorted(large.rglob("*.bin"))
    total = sum(f.stat().st_size for f in files)
    buf = bytearray(8 * MIB)
    view = memoryview(buf)
    start = time.perf_counter()
    for path in files:
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                hasher.update(view[:n])
        hasher.hexdigest()
    from_files = total / (time.perf_counter() - start) / 1e9
    data = files[0].read_bytes()  # real bytes: a zero-filled buffer would time page faults
    speeds = []
    for _ in range(3):
        start = time.perf_counter()
        blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest()
        speeds.append(len(data) / (time.perf_counter() - start) / 1e9)
    in_memory = statistics.median(speeds)
    return from_files, in_memory


# -- the child process: one ingest (then incremental changes), or one read -------------------


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM): unlike ru_maxrss, it does not inherit the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / KIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB  # not Linux: KiB, or bytes


class Heartbeat:
    """Sleeps 1 ms in a loop and remembers the longest overshoot: the event loop's worst stall.

    A stall is code running on the loop, or the loop's thread waiting for the GIL or a CPU. To
    tell them apart, ``longest_step`` is the longest single event-loop callback: code that ran
    on the loop itself (it hooks asyncio, anyio's default backend).
    """

    def __init__(self) -> None:
        self.stall = 0.0
        self.longest_step = 0.0

    async def run(self) -> None:
        original = asyncio.events.Handle._run

        def timed(handle: asyncio.events.Handle) -> None:
            start = time.perf_counter()
            original(handle)
            self.longest_step = max(self.longest_step, time.perf_counter() - start)

        asyncio.events.Handle._run = timed  # type: ignore[method-assign]
        try:
            while True:
                start = time.perf_counter()
                await anyio.sleep(0.001)
                self.stall = max(self.stall, time.perf_counter() - start - 0.001)
        finally:
            asyncio.events.Handle._run = original  # type: ignore[method-assign]


def prepare_changes(work: Path, increments: int, changes: int, size: int) -> list[Path]:
    """For each incremental change, a folder of ``replace/`` and ``new/`` files (untimed)."""
    folders = []
    for k in range(increments):
        folder = work / f"change-{k}"
        for kind in ("replace", "new"):
            (folder / kind).mkdir(parents=True)
            for j in range(changes):
                (folder / kind / f"{j}.bin").write_bytes(os.urandom(size))
        folders.append(folder)
    return folders


async def incremental_change(
    saved: asyncart.Artifact, folder: Path, paths: list[str], changes: int
) -> tuple[asyncart.Artifact, float]:
    """Remove ``changes`` files, replace as many and add as many new ones; save. Seconds."""
    start = time.perf_counter()
    draft = saved.new_draft()
    for path in paths[:changes]:
        draft.remove(path)
    for j, path in enumerate(paths[changes : 2 * changes]):
        await draft.add_file(folder / "replace" / f"{j}.bin", path, overwrite=True)
    await draft.add_dir(folder / "new", f"new/{folder.name}")
    new = await draft.save()
    return new, time.perf_counter() - start


async def ingest_worker(
    src: str, store: str, name: str, change_folders: list[Path], changes: int
) -> dict:
    heartbeat = Heartbeat()
    rss_before = peak_rss_mib()
    async with anyio.create_task_group() as tg:
        tg.start_soon(heartbeat.run)
        start = time.perf_counter()
        artifact = asyncart.Artifact(name, "dataset")
        await artifact.add_dir(src)
        saved = await artifact.save(project=PROJECT, store=store)
        seconds = time.perf_counter() - start
        tg.cancel_scope.cancel()
    result = {
        "seconds": seconds,
        "files": len(saved.manifest),
        "bytes": saved.size,
        "stall": heartbeat.stall,
        "longest_step": heartbeat.longest_step,
        "rss_before_mib": rss_before,
        "rss_peak_mib": peak_rss_mib(),
        "changes": [],
    }
    paths = sorted(saved.manifest.entries)  # change k removes and replaces its own 2 x changes
    for k, folder in enumerate(change_folders):
        mine = paths[2 * changes * k : 2 * changes * (k + 1)]
        saved, took = await incremental_change(saved, folder, mine, changes)
        result["changes"].append(took)
    return result


async def cp_worker(src: str, dest: str) -> dict:
    """``cp -r SRC DEST && sync`` (a durable copy by the system's tools) under the same heartbeat.

    Its stall is the baseline of measurement 5: what the machine alone does to an idle loop.
    """
    heartbeat = Heartbeat()
    async with anyio.create_task_group() as tg:
        tg.start_soon(heartbeat.run)
        start = time.perf_counter()
        await anyio.run_process(["sh", "-c", 'cp -r "$0" "$1" && sync', src, dest])
        seconds = time.perf_counter() - start
        tg.cancel_scope.cancel()
    return {"seconds": seconds, "stall": heartbeat.stall, "longest_step": heartbeat.longest_step}


async def read_worker(store: str, ref: str) -> dict:
    start = time.perf_counter()
    api = asyncart.Api(project=PROJECT, store=store)
    artifact = await api.artifact(ref)
    files = len(artifact.manifest)
    return {"seconds": time.perf_counter() - start, "files": files}


def worker_main(job: dict) -> None:
    if job["kind"] == "ingest":
        folders = prepare_changes(
            Path(job["work"]), job["increments"], job["changes"], job["change_size"]
        )
        result = anyio.run(
            ingest_worker, job["src"], job["store"], job["name"], folders, job["changes"]
        )
    elif job["kind"] == "cp":
        result = anyio.run(cp_worker, job["src"], job["dest"])
    else:
        result = anyio.run(read_worker, job["store"], job["ref"])
    print(json.dumps(result))


def in_child(**job: Any) -> dict:
    """Run one job in a fresh Python process (this script with --worker); return its result."""
    sync()
    done = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(job, default=str)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker {job['kind']} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


# -- the chain of versions ------------------------------------------------------------------


async def build_chain(src: Path, pool: Path, store: Path, versions: int) -> list[float]:
    """A 2,000-file artifact, then ``versions`` versions changing 1-3 files each. Commit seconds."""
    artifact = asyncart.Artifact("chain", "dataset")
    await artifact.add_dir(src)
    saved = await artifact.save(project=PROJECT, store=store)
    paths = sorted(saved.manifest.entries)
    contents = await anyio.to_thread.run_sync(lambda: sorted(pool.rglob("*.bin")))
    if 2 * versions > len(paths):
        raise ValueError("the chain needs at least 2 files per version")
    times = []
    for i in range(versions):
        start = time.perf_counter()
        draft = saved.new_draft()
        await draft.add_file(contents[i % len(contents)], paths[i], overwrite=True)
        if i % 2 == 0:
            await draft.add_file(contents[(i + 1) % len(contents)], f"extra/{i}.bin")
        if i % 3 == 0:
            draft.remove(paths[-1 - i])
        saved = await draft.save()
        times.append(time.perf_counter() - start)
    return times


# -- the run --------------------------------------------------------------------------------


@dataclass
class Results:
    sizes: Sizes
    cp_small: list[dict] = field(default_factory=list)
    cp_large: list[dict] = field(default_factory=list)
    small: list[dict] = field(default_factory=list)
    large: list[dict] = field(default_factory=list)
    medium: list[dict] = field(default_factory=list)
    chain_commits: list[float] = field(default_factory=list)
    chain_log_bytes: int = 0
    reads: dict[str, list[float]] = field(default_factory=dict)
    blake3_files: list[float] = field(default_factory=list)
    blake3_memory: list[float] = field(default_factory=list)


def interleaved(trial: int, *steps: Callable[[], None]) -> None:
    """Run the steps in order on even trials, reversed on odd ones."""
    for step in steps if trial % 2 == 0 else reversed(steps):
        step()


def run_trial(trial: int, root: Path, data: dict[str, Path], sizes: Sizes, out: Results) -> None:
    here = root / f"trial-{trial}"
    here.mkdir()

    def ingest(kind: str, src: Path, increments: int) -> dict:
        return in_child(
            kind="ingest",
            src=src,
            store=here / f"store-{kind}",
            name=kind,
            work=here / f"changes-{kind}",
            increments=increments,
            changes=sizes.changes,
            change_size=sizes.small_size,
        )

    interleaved(
        trial,
        lambda: out.cp_small.append(in_child(kind="cp", src=data["small"], dest=here / "cp-small")),
        lambda: out.small.append(ingest("small", data["small"], sizes.increments)),
    )
    interleaved(
        trial,
        lambda: out.cp_large.append(in_child(kind="cp", src=data["large"], dest=here / "cp-large")),
        lambda: out.large.append(ingest("large", data["large"], 0)),
    )
    out.medium.append(ingest("medium", data["medium"], sizes.increments))
    files, memory = blake3_speeds(data["large"])
    out.blake3_files.append(files)
    out.blake3_memory.append(memory)
    drop_large_copies(here)


def drop_large_copies(folder: Path) -> None:
    """Delete the trial's files over 1 MiB (its 2 GB of copies of the large files; the small
    files' stores hold no such file), not the many small ones."""
    for path in folder.rglob("*"):
        if path.is_file() and path.stat().st_size > MIB:
            path.unlink()


def run_chain(root: Path, data: dict[str, Path], sizes: Sizes, out: Results) -> None:
    store = root / "chain-store"
    sync()
    out.chain_commits = anyio.run(build_chain, data["medium"], data["pool"], store, sizes.chain)
    out.chain_log_bytes = sum(f.stat().st_size for f in (store / "log").rglob("*.log"))
    refs = ["chain:v0", "chain:v1", f"chain:v{sizes.chain // 2}", "chain:latest"]
    for _ in range(sizes.reads):
        for ref in refs:  # interleaved, so that no version gets a warmer machine
            result = in_child(kind="read", store=store, ref=ref)
            out.reads.setdefault(ref, []).append(result["seconds"])


# -- the report -----------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values)


def verdict(ok: bool) -> str:
    return "ok" if ok else "**MISS**"


def report(out: Results, root: Path, elapsed: float, load: tuple[float, float]) -> str:
    s = out.sizes
    small_mb = s.small_files * s.small_size / 1e6
    large_mb = s.large_files * s.large_size / 1e6
    t_small = med([r["seconds"] for r in out.small])
    t_cp_small = med([r["seconds"] for r in out.cp_small])
    t_large = med([r["seconds"] for r in out.large])
    t_cp_large = med([r["seconds"] for r in out.cp_large])
    r_small, r_large = t_small / t_cp_small, t_large / t_cp_large
    inc_small = [t * 1e3 for r in out.small for t in r["changes"]]
    inc_medium = [t * 1e3 for r in out.medium for t in r["changes"]]
    stalls = {
        "1": (out.small, out.cp_small),
        "2": (out.large, out.cp_large),
    }
    rss = med([r["rss_peak_mib"] for r in out.small])
    rss_base = med([r["rss_before_mib"] for r in out.small])
    n_change = 3 * s.changes

    rows = [
        ("Measurement", "asyncart", "baseline", "ratio", "target", "verdict"),
        (
            f"1. ingest {s.small_files:,} x {s.small_size // KIB} KiB",
            f"{t_small:.2f} s = {s.small_files / t_small:,.0f} files/s, "
            f"{small_mb / t_small:,.0f} MB/s",
            f"cp -r+sync {t_cp_small:.2f} s = {s.small_files / t_cp_small:,.0f} files/s",
            f"{r_small:.2f}x",
            "<= 1.5x",
            verdict(r_small <= 1.5),
        ),
        (
            f"2. ingest {s.large_files} x {s.large_size // MIB} MiB",
            f"{t_large:.2f} s = {large_mb / t_large:,.0f} MB/s",
            f"cp -r+sync {t_cp_large:.2f} s = {large_mb / t_cp_large:,.0f} MB/s",
            f"{r_large:.2f}x",
            "<= 1.3x",
            verdict(r_large <= 1.3),
        ),
    ]
    for files, values in ((s.small_files, inc_small), (s.medium_files, inc_medium)):
        rows.append(
            (
                f"3. {n_change}-file change of {files:,}-file artifact",
                f"{med(values):.1f} ms (max {max(values):.1f}, n={len(values)})",
                "",
                "",
                "< 50 ms",
                verdict(med(values) < 50),
            )
        )
    first = med(next(iter(out.reads.values())))
    for ref, values in out.reads.items():
        rows.append(
            (
                f"4. read {ref} of {s.chain + 1} versions, fresh process",
                f"{med(values) * 1e3:.1f} ms (n={len(values)})",
                "" if med(values) == first else "vs v0",
                f"{med(values) / first:.2f}x",
                "flat",
                "",
            )
        )
    for label, (ours, cps) in stalls.items():
        for key, what in (("stall", "max event-loop stall"), ("longest_step", "longest loop step")):
            ms, idle_ms = (max(r[key] for r in runs) * 1e3 for runs in (ours, cps))
            rows.append(
                (
                    f"5. {what} during ingest {label}",
                    f"{ms:.1f} ms (worst of {len(ours)})",
                    f"idle loop during cp: {idle_ms:.1f} ms",
                    "",
                    "< 10 ms",
                    verdict(ms < 10),
                )
            )
    rows.append(
        (
            "6. peak RSS of ingest 1",
            f"{rss:.0f} MiB (after imports: {rss_base:.0f} MiB)",
            "",
            "",
            "<= 100 MB",
            verdict(rss * MIB <= 100e6),
        )
    )
    rows.append(
        (
            "BLAKE3 of the large files, all cores",
            f"{med(out.blake3_files):.2f} GB/s read+hash, "
            f"{med(out.blake3_memory):.2f} GB/s in memory",
            "",
            "",
            "",
            "",
        )
    )
    commits = [t * 1e3 for t in out.chain_commits]
    lines = [markdown_table(rows), ""]
    lines.append(
        f"Chain build: {len(commits)} commits of 1-3 files, median {med(commits):.1f} ms, "
        f"max {max(commits):.1f} ms; log {out.chain_log_bytes / 1e6:.2f} MB."
    )
    lines.append(raw_line("cp small (s)", [r["seconds"] for r in out.cp_small]))
    lines.append(raw_line("asyncart small (s)", [r["seconds"] for r in out.small]))
    lines.append(raw_line("cp large (s)", [r["seconds"] for r in out.cp_large]))
    lines.append(raw_line("asyncart large (s)", [r["seconds"] for r in out.large]))
    lines.append(
        f"\n{len(out.small)} trial(s), {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"asyncart {asyncart.__version__}; whole run {elapsed:.0f} s; load average "
        f"{load[0]:.1f} at the start, {load[1]:.1f} at the end (other work on the machine "
        "shows as noise and as loop stalls in the baseline too)."
    )
    lines.append(
        f"The benchmark data is in {root} ({du_mb(root):,.0f} MB; each trial's copies of the "
        "large files were deleted). "
        f"Delete it when done: rm -rf {root}"
    )
    return "\n".join(lines)


def raw_line(label: str, values: list[float]) -> str:
    return f"Raw {label}: " + ", ".join(f"{v:.3f}" for v in values)


def markdown_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def du_mb(root: Path) -> float:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", help="where to put the data (a new folder is made inside)")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 trial: a smoke test")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(json.loads(args.worker))
        return
    sizes = QUICK if args.quick else Sizes()
    trials = 1 if args.quick else args.trials
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="asyncart-bench-", dir=args.dir))
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    print(f"data in {root}; {trials} trial(s) {asdict(sizes)}", file=sys.stderr)
    data = make_data(root, sizes)
    out = Results(sizes)
    for trial in range(trials):
        print(f"trial {trial + 1}/{trials}", file=sys.stderr)
        run_trial(trial, root, data, sizes, out)
    print("chain of versions", file=sys.stderr)
    run_chain(root, data, sizes, out)
    load = (load_before, os.getloadavg()[0])
    print(report(out, root, time.perf_counter() - started, load))


if __name__ == "__main__":
    main()
