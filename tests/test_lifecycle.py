"""Lifecycle deletions: a deletion a rule makes says why in its version.deleted record."""

from __future__ import annotations

from pathlib import Path

import asyncart
from asyncart._domain.events import VersionDeleted
from asyncart._history import read_records
from asyncart._repository import Repository, collection_stream

STREAM = collection_stream("demo", "ds")


async def test_a_deletion_records_its_reason_and_the_audit_passes(tmp_path: Path) -> None:
    root, store_path = tmp_path / "files", str(tmp_path / "store")
    root.mkdir()
    for text in ("zero", "one"):
        (root / "f.txt").write_text(text)
        artifact = asyncart.Artifact("ds", "dataset")
        await artifact.add_dir(root)
        await artifact.save("demo", store_path, aliases=["best"] if text == "zero" else [])
    store = asyncart.LocalStore(store_path)
    repo = Repository(store)
    await repo.delete("demo", "ds", 0, delete_aliases=True, actor="u:rules", reason="ttl")
    await repo.delete("demo", "ds", 1, delete_aliases=False, actor="u:me")
    bodies = [r.body for r in await read_records(store, STREAM)]
    deletions = [b for b in bodies if isinstance(b, VersionDeleted)]
    assert deletions == [VersionDeleted(0, ["best"], "ttl"), VersionDeleted(1, [], "")]
    state = await repo.collection("demo", "ds")
    assert [v.deleted is not None for v in state.versions] == [True, True]
    report = await asyncart.audit("demo", store=store_path)
    assert report.ok, report
