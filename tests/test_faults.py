"""Fault injection: a store wrapper that fails on demand, and cancellation mid-ingest.

Whatever fails, the commit protocol must leave either the old state or the new one: no version
that points at missing bytes, and a retry that simply works.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

import asyncart
from asyncart._backends.base import UploadItem


class FailingBlobs:
    """Delegates to a real blob store, but ``put_files`` fails on the ``fail_at``-th call."""

    def __init__(self, inner, fail_at: int) -> None:
        self.inner, self.fail_at, self.calls = inner, fail_at, 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    async def put_files(self, items: Sequence[UploadItem]) -> int:
        self.calls += 1
        if self.calls == self.fail_at:
            raise OSError(28, "No space left on device")
        return await self.inner.put_files(items)


class FailingLog:
    """Delegates to a real event log, but every ``append`` fails while ``broken`` is set."""

    def __init__(self, inner) -> None:
        self.inner, self.broken = inner, True

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    async def append(
        self, stream: str, payloads: Sequence[bytes], expected_seq: int, note: bytes = b"", **kw
    ) -> int:
        if self.broken:
            raise OSError(5, "Input/output error")
        return await self.inner.append(stream, payloads, expected_seq, note, **kw)


class FaultyStore:
    def __init__(self, root: str, *, fail_put_at: int = 0) -> None:
        local = asyncart.LocalStore(root)
        self.location = local.location
        self.blobs = FailingBlobs(local.blobs, fail_put_at)
        self.log = FailingLog(local.log) if not fail_put_at else local.log
        self.held = local.held
        self.aclose = local.aclose


def _many_files(root: Path, count: int, size: int) -> Path:
    root.mkdir()
    for i in range(count):
        (root / f"f{i:04}.bin").write_bytes(os.urandom(size))
    return root


async def test_a_failing_upload_commits_nothing_and_a_retry_works(store, tmp_path):
    data = _many_files(tmp_path / "data", 600, 1000)  # 3 batches of up to 256 files
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_dir(data)
    with pytest.raises(OSError, match="No space left"):
        await artifact.save(project="demo", store=FaultyStore(store, fail_put_at=2), concurrency=1)
    with pytest.raises(asyncart.NotFoundError):
        await asyncart.Api("demo", store=store).artifact("ds")

    retry = asyncart.Artifact("ds", "dataset")
    await retry.add_dir(data)
    saved = await retry.save(project="demo", store=store)
    assert (saved.version, len(saved.manifest)) == ("v0", 600)
    assert (await asyncart.audit("demo", store=store)).ok


async def test_a_failing_append_leaves_only_harmless_blobs(store, files):
    faulty = FaultyStore(store)
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_dir(files)
    with pytest.raises(OSError, match="Input/output error"):
        await artifact.save(project="demo", store=faulty)
    report = await asyncart.audit("demo", store=store)
    assert report.ok and report.versions == 0  # blobs without events are not a problem

    faulty.log.broken = False
    again = asyncart.Artifact("ds", "dataset")
    await again.add_dir(files)
    assert (await again.save(project="demo", store=faulty)).version == "v0"


async def test_cancelling_an_ingest_commits_nothing(store, tmp_path):
    data = _many_files(tmp_path / "data", 40, 2 << 20)  # 80 MiB
    artifact = asyncart.Artifact("big", "dataset")
    await artifact.add_dir(data)
    progressed = anyio.Event()

    def progress(p: asyncart.Progress) -> None:
        if p.files_done:
            progressed.set()

    async with anyio.create_task_group() as tg:

        async def ingest() -> None:
            await artifact.save(project="demo", store=store, progress=progress, concurrency=1)

        tg.start_soon(ingest)
        await progressed.wait()
        tg.cancel_scope.cancel()

    with pytest.raises(asyncart.NotFoundError):
        await asyncart.Api("demo", store=store).artifact("big")
    assert (await asyncart.audit("demo", store=store)).ok
    assert not list(Path(store).rglob("*.tmp"))  # no temp file left behind
    again = asyncart.Artifact("big", "dataset")
    await again.add_dir(data)
    assert (await again.save(project="demo", store=store)).version == "v0"
