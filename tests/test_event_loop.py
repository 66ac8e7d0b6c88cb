"""The event loop stays responsive while asyncart moves a lot of data.

What the code controls, and these tests assert: no blocking call on the loop (blockbuster,
from conftest, fails any blocking call that asyncart makes there), and little work on the loop
at a time. A heartbeat task sleeps 5 ms at a time and records the loop thread's own CPU time
between two wakeups (``time.thread_time``): hashing, copying or folding a big manifest on the
loop shows there, whatever the machine's load.

Wall-clock gaps between wakeups are not asserted: they also grow when the process is merely
not scheduled (a loaded 2-core CI machine once measured 273 ms with the code unchanged). They
are printed for information; ``bench/bench.py`` measures them on a quiet machine.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

import asyncart

MiB = 1 << 20
MAX_LOOP_CPU = 0.050  # seconds of the loop thread's CPU time between two wakeups
BEAT = 0.005


@dataclass
class Heartbeat:
    beats: int = 0
    gaps: list[float] = field(default_factory=list)  # wall clock: printed, never asserted
    busy: list[float] = field(default_factory=list)  # loop-thread CPU time between wakeups

    @property
    def max_gap(self) -> float:
        return max(self.gaps, default=0.0)

    def report(self, what: str, seconds: float) -> str:
        return (
            f"{what}: {seconds:.2f} s, {self.beats} heartbeats, "
            f"longest gap {1000 * self.max_gap:.1f} ms (wall clock, not asserted), "
            f"most loop CPU between beats {1000 * self.max_busy:.1f} ms "
            f"(limit {1000 * MAX_LOOP_CPU:.0f} ms)"
        )

    @property
    def max_busy(self) -> float:
        return max(self.busy, default=0.0)


@asynccontextmanager
async def heartbeat() -> AsyncIterator[Heartbeat]:
    """Measure the loop's stalls while the body runs, including one at the very end."""
    hb = Heartbeat()
    last, last_cpu = time.perf_counter(), time.thread_time()

    async def beat() -> None:
        nonlocal last, last_cpu
        while True:
            await anyio.sleep(BEAT)
            now, cpu = time.perf_counter(), time.thread_time()
            hb.gaps.append(now - last)
            hb.busy.append(cpu - last_cpu)
            hb.beats += 1
            last, last_cpu = now, cpu

    async with anyio.create_task_group() as tg:
        tg.start_soon(beat)
        await anyio.lowlevel.checkpoint()  # let the heartbeat start before the work does
        yield hb
        hb.gaps.append(time.perf_counter() - last)  # a stall right before the end counts too
        hb.busy.append(time.thread_time() - last_cpu)
        tg.cancel_scope.cancel()


def show(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\n  {line}", end="")


def write_random_files(root: Path, count: int, size: int) -> None:
    """``count`` files of ``size`` random bytes, written in 8 MiB chunks (outside the timing)."""
    root.mkdir(parents=True)
    for i in range(count):
        with (root / f"big-{i}.bin").open("wb") as f:
            for _ in range(size // (8 * MiB)):
                f.write(os.urandom(8 * MiB))


def write_small_files(root: Path, count: int) -> None:
    for i in range(count):
        path = root / f"dir{i // 100:02}" / f"file{i:05}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"%d\n" % i + os.urandom(64))


def clean(tmp_path: Path) -> None:
    """Delete the test's data now: unwritten pages of deleted files never reach the disk, so
    the next test's sync does not have to flush them (and /tmp does not keep 0.75 GiB)."""
    for child in tmp_path.iterdir():
        shutil.rmtree(child, ignore_errors=True)


async def ingest_and_download(
    src: Path, store: str, out: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> tuple[asyncart.Artifact, Heartbeat, Heartbeat]:
    """Log ``src`` as an artifact, then download and verify it, each under a heartbeat."""
    start = time.perf_counter()
    async with heartbeat() as during_ingest, asyncart.init(project="demo", store=store) as run:
        artifact = asyncart.Artifact(name, "dataset")
        await artifact.add_dir(src)
        logged = await run.log_artifact(artifact)
    show(capsys, during_ingest.report(f"{name} ingest", time.perf_counter() - start))

    start = time.perf_counter()
    async with heartbeat() as during_download:
        root = await logged.download(out)
        await logged.verify(root)
    show(capsys, during_download.report(f"{name} download", time.perf_counter() - start))
    return logged, during_ingest, during_download


def assert_responsive(hb: Heartbeat, what: str) -> None:
    """The loop ran little between any two heartbeats. (How many beats there were depends on
    the machine's speed, so it is not asserted: with few, each interval covers more of the work
    and the bound is only stricter.)"""
    assert hb.max_busy < MAX_LOOP_CPU, (
        f"{what}: asyncart ran {1000 * hb.max_busy:.0f} ms on the loop between two heartbeats"
    )


async def test_loop_stays_responsive_during_a_256_mib_ingest_and_download(
    tmp_path: Path, store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_random_files(tmp_path / "big", count=4, size=64 * MiB)

    logged, ingest, download = await ingest_and_download(
        tmp_path / "big", store, tmp_path / "out", "big", capsys
    )

    assert logged.version == "v0"
    assert len(logged.manifest) == 4 and logged.size == 256 * MiB
    assert_responsive(ingest, "256 MiB ingest")
    assert_responsive(download, "256 MiB download")
    clean(tmp_path)


async def test_loop_stays_responsive_with_5000_small_files(
    tmp_path: Path, store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_small_files(tmp_path / "small", 5000)

    logged, ingest, download = await ingest_and_download(
        tmp_path / "small", store, tmp_path / "out", "small", capsys
    )

    assert logged.version == "v0" and len(logged.manifest) == 5000
    assert "dir49/file04999.txt" in logged.manifest.entries
    assert_responsive(ingest, "5,000-file ingest")
    assert_responsive(download, "5,000-file download")
    clean(tmp_path)
