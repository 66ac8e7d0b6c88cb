"""A local store on a full disk: a clear BackendUnavailableError, nothing half-stored, and the
same save succeeds once there is room again."""

from __future__ import annotations

import os
from pathlib import Path

import anyio.to_thread
import pytest
from _disks import fill, small_disk

import asyncart
from asyncart import BackendUnavailableError


@pytest.mark.allow_blocking  # mounts, fills and lists the small disk
async def test_a_full_disk_fails_the_save_clearly_and_stores_nothing(tmp_path: Path) -> None:
    source = tmp_path / "data"
    source.mkdir()
    (source / "big.bin").write_bytes(os.urandom(3 << 20))
    (source / "small.txt").write_text("hello\n")
    with small_disk(tmp_path / "disk", "8m") as disk:
        store = disk / "store"
        first = asyncart.Artifact("ds", "dataset")
        await first.add_file(source / "small.txt")
        await first.save(project="p", store=store)  # v0 fits
        log = sorted(p.read_bytes() for p in (store / "log").rglob("*.log"))
        await anyio.to_thread.run_sync(fill, disk)

        draft = asyncart.Artifact("ds", "dataset")
        await draft.add_dir(source)
        with pytest.raises(BackendUnavailableError, match="out of disk space"):
            await draft.save(project="p", store=store)
        assert sorted(p.read_bytes() for p in (store / "log").rglob("*.log")) == log
        assert not list((store / "blobs").rglob("*.tmp")), "no temp file left behind"

        (disk / "filler").unlink()
        again = asyncart.Artifact("ds", "dataset")
        await again.add_dir(source)
        saved = await again.save(project="p", store=store)
        assert saved.version == "v1"
        assert (await asyncart.audit(store=store)).ok
