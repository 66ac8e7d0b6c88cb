"""Lifecycle deletions: a deletion a rule makes says why in its version.deleted record, on the
local store, through a server, and on PostgreSQL + S3."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _serving import Server

import asyncart
from asyncart._domain.events import VersionDeleted
from asyncart._history import read_records
from asyncart._repository import Repository, collection_stream
from asyncart._store import open_store

STREAM = collection_stream("demo", "ds")


@pytest.fixture(params=["local", "http", "pg"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    """(store, token): a fresh local store, the same through a real server, or PostgreSQL + S3."""
    if request.param == "pg":
        yield request.getfixturevalue("pg_s3_store"), None
    elif request.param == "http":
        server = Server(tmp_path / "served").start()
        try:
            yield server.url, server.token("demo", write=True)
        finally:
            server.stop()
    else:
        yield str(tmp_path / "store"), None


async def test_a_deletion_records_its_reason_and_the_audit_passes(where, tmp_path: Path) -> None:
    location, token = where
    root = tmp_path / "files"
    root.mkdir()
    for text in ("zero", "one"):
        (root / "f.txt").write_text(text)
        artifact = asyncart.Artifact("ds", "dataset")
        await artifact.add_dir(root)
        aliases = ["best"] if text == "zero" else []
        await artifact.save("demo", location, token=token, aliases=aliases)
    store = open_store(location, token)
    repo = Repository(store)
    await repo.delete("demo", "ds", 0, delete_aliases=True, actor="user:rules", reason="ttl")
    await repo.delete("demo", "ds", 1, delete_aliases=False, actor="user:me")
    bodies = [r.body for r in await read_records(store, STREAM)]
    deletions = [b for b in bodies if isinstance(b, VersionDeleted)]
    assert deletions == [VersionDeleted(0, ["best"], "ttl"), VersionDeleted(1, [], "")]
    state = await repo.collection("demo", "ds")
    assert [v.deleted is not None for v in state.versions] == [True, True]
    report = await asyncart.audit("demo", store=location, token=token)
    assert report.ok, report
