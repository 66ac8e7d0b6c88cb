"""An upload asks the store what it lacks, and sends it, a slice of files at a time."""

from __future__ import annotations

from pathlib import Path

import pytest
from _records import StoreWith

import asyncart
from asyncart import _transfer


class CountingBlobs:
    """Delegates to a real blob store and records what ``missing`` and ``put_files`` see."""

    def __init__(self, inner) -> None:
        self.inner, self.asked, self.put = inner, [], []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    async def missing(self, sizes):
        self.asked.append(dict(sizes))
        return await self.inner.missing(sizes)

    async def put_files(self, items):
        self.put += [item.digest for item in items]
        return await self.inner.put_files(items)


async def test_a_large_upload_goes_in_slices_and_sends_each_blob_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_transfer, "ASK_FILES", 7)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"{i:02d}.txt").write_text(f"file {i % 20}")  # 10 contents twice, far apart
    local = asyncart.LocalStore(tmp_path / "store")
    store = StoreWith(local, blobs=CountingBlobs(local.blobs))
    seen: list[asyncart.Progress] = []
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_dir(src)
    saved = await artifact.save(project="p", store=store, progress=seen.append)
    assert len(store.blobs.asked) == 5 and all(len(a) <= 7 for a in store.blobs.asked)
    assert sorted(store.blobs.put) == sorted({e.digest for e in saved.manifest.entries.values()})
    assert (seen[0].files_total, seen[-1].files_done) == (20, 20)  # totals first, then all
    reread = await asyncart.Api("p", store=tmp_path / "store").artifact("ds:latest")
    assert len(reread.manifest) == 30
    assert (await asyncart.audit(store=tmp_path / "store", read_data=True)).ok
