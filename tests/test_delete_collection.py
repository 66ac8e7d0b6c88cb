"""Discarding a pending distributed draft: one draft.discarded record, on the local store,
through a server, and on PostgreSQL + S3."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from _where import THREE, Where, stores

import asyncart
from asyncart import NotFoundError
from asyncart._cli import main


@pytest.fixture(params=THREE)
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Where]:
    """A fresh local store, the same through a real server, or PostgreSQL + S3."""
    yield from stores(request, tmp_path)


def _part(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_text(f"{name}\n")
    return path


async def test_discard_then_upsert_opens_a_new_draft(where: Where, tmp_path: Path) -> None:
    init = asyncart.init(project="demo", group="g", store=where.store, token=where.token)
    async with init as run:
        first = asyncart.Artifact("ds", "dataset")
        await first.add_file(_part(tmp_path, "old.txt"))
        await run.upsert_artifact(first)
        await run.discard_artifact("ds")
        with pytest.raises(NotFoundError, match="no pending draft for distributed_id 'g'"):
            await run.discard_artifact("ds")  # nothing pending any more
        second = asyncart.Artifact("ds", "dataset")
        await second.add_file(_part(tmp_path, "new.txt"))
        await run.upsert_artifact(second)
        version = await run.finish_artifact(asyncart.Artifact("ds", "dataset"))
    # the discarded draft's file is not in the version: the upsert opened a new draft
    assert (version.version, set(version.manifest.entries)) == ("v0", {"new.txt"})


async def test_discard_without_a_pending_draft_is_not_found(where: Where) -> None:
    async with asyncart.init(project="demo", store=where.store, token=where.token) as run:
        with pytest.raises(NotFoundError, match="nothing to discard: demo/ds"):
            await run.discard_artifact("ds", distributed_id="nope")


async def test_api_discard_closes_the_draft(where: Where, tmp_path: Path) -> None:
    init = asyncart.init(project="demo", store=where.store, token=where.token)
    async with init as run:
        part = asyncart.Artifact("ds", "dataset")
        await part.add_file(_part(tmp_path, "old.txt"))
        await run.upsert_artifact(part, "shards")
    api = asyncart.Api("demo", where.store, where.token)
    await api.discard_artifact("ds", "shards")
    with pytest.raises(NotFoundError, match="no pending draft for distributed_id 'shards'"):
        await api.discard_artifact("ds", "shards")


def test_cli_discard_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "store")

    async def upsert() -> None:
        async with asyncart.init(project="demo", store=store) as run:
            part = asyncart.Artifact("ds", "dataset")
            await part.add_file(_part(tmp_path, "old.txt"))
            await run.upsert_artifact(part, "shards")

    anyio.run(upsert)
    argv = ["--store", store, "--json", "discard", "demo/ds", "--distributed-id", "shards"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["name"], out["distributed_id"]) == ("ds", "shards") and out["draft"]
    assert main(argv) != 0  # nothing pending any more
