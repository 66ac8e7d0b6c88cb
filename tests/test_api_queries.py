"""W&B's Api queries: artifacts, artifact_versions, artifact_type(s), artifact_collection(s),
on the local store, through a server and on PostgreSQL + S3; listings read notes only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _records import CountingStore
from _serving import Server

import asyncart
from asyncart._names import parse_ref
from asyncart._store import open_store


@dataclass
class Where:
    store: str
    token: str | None = None


@pytest.fixture(params=["local", "http", "pg"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Where]:
    """A fresh local store, the same through a real server, or PostgreSQL + S3."""
    if request.param == "pg":
        yield Where(request.getfixturevalue("pg_s3_store"))
    elif request.param == "http":
        server = Server(tmp_path / "served").start()
        try:
            yield Where(server.url, server.token("demo", write=True))
        finally:
            server.stop()
    else:
        yield Where(str(tmp_path / "store"))


async def _log(where: Where, files: Path, name: str, type_: str, text: str, tags=()) -> None:
    (files / "f.txt").write_text(text)
    artifact = asyncart.Artifact(name, type_)
    await artifact.add_file(files / "f.txt")
    artifact.tags = list(tags)
    await artifact.save("demo", where.store, token=where.token)


async def _fill(where: Where, files: Path) -> None:
    """demo/ds (dataset): v0 [a], v1 [a, b], v2 []; demo/model (model): v0; demo/raw (dataset)."""
    await _log(where, files, "ds", "dataset", "zero", ["a"])
    await _log(where, files, "ds", "dataset", "one", ["a", "b"])
    await _log(where, files, "ds", "dataset", "two")
    await _log(where, files, "model", "model", "m")
    await _log(where, files, "raw", "dataset", "r")


def _api(where: Where) -> asyncart.Api:
    return asyncart.Api("demo", where.store, where.token)


def _numbers(found: list[asyncart.Artifact]) -> list[str | None]:
    return [a.version for a in found]


async def test_artifacts_are_newest_first_and_of_the_type_asked(where: Where, files: Path) -> None:
    await _fill(where, files)
    async with _api(where) as api:
        assert _numbers(await api.artifacts("dataset", "ds")) == ["v2", "v1", "v0"]
        assert _numbers(await api.artifact_versions("dataset", "ds")) == ["v2", "v1", "v0"]
        assert _numbers(await api.artifact_versions("ds")) == ["v2", "v1", "v0"]  # any type
        assert _numbers(await api.artifacts("dataset", "team/demo/ds", per_page=1)) == [
            "v2",
            "v1",
            "v0",
        ]
        assert _numbers(await api.artifacts("dataset", "ds", tags="a")) == ["v1", "v0"]
        assert _numbers(await api.artifacts("dataset", "ds", tags=["b", "a"])) == ["v1"]
        assert await api.artifacts("dataset", "ds", tags=["a", "c"]) == []
        with pytest.raises(ValueError, match="artifact demo/ds is of type 'dataset', not 'model'"):
            await api.artifacts("model", "ds")
        with pytest.raises(asyncart.InvalidInputError, match="of type 'dataset', not 'ds'"):
            await api.artifact_versions("ds", "demo/ds")  # the old (name, project) order
        with pytest.raises(asyncart.NotFoundError, match="artifact demo/nope not found"):
            await api.artifact_versions("dataset", "nope")
        assert await api.artifact_versions("nope") == []  # as before: no type, nothing to check
        with pytest.raises(asyncart.InvalidInputError, match="names a version"):
            await api.artifacts("dataset", "ds:v1")
        with pytest.raises(asyncart.InvalidInputError, match="per_page must be a positive int"):
            await api.artifacts("dataset", "ds", per_page=0)
        with pytest.raises(asyncart.InvalidInputError, match="invalid tag"):
            await api.artifacts("dataset", "ds", tags=["a/b"])


async def test_types_and_collections(where: Where, files: Path) -> None:
    await _fill(where, files)
    api = _api(where)
    types = await api.artifact_types()
    assert [(t.name, t.type, t.project) for t in types] == [
        ("dataset", "dataset", "demo"),
        ("model", "model", "demo"),
    ]
    dataset = await api.artifact_type("dataset")
    assert [c.name for c in await dataset.collections()] == ["ds", "raw"]
    with pytest.raises(asyncart.NotFoundError, match="no artifact of type 'weights'"):
        await api.artifact_type("weights", project="demo")
    assert await api.artifact_types("other") == []
    assert [c.name for c in await api.artifact_collections(type_name="dataset")] == ["ds", "raw"]
    assert [c.name for c in await api.artifact_collections("demo", "model")] == ["model"]
    assert await api.artifact_collections(type_name="weights") == []

    ds = await api.artifact_collection("dataset", "ds")
    assert (ds.project, ds.name, ds.type, ds.summary.versions) == ("demo", "ds", "dataset", 3)
    assert dict(ds.aliases) == {"latest": 2} and ds.updated is not None
    assert _numbers(await ds.artifacts()) == ["v2", "v1", "v0"]
    assert _numbers(await ds.versions(tags="b")) == ["v1"]
    assert (await dataset.collection("raw")).summary == (await api.artifact_collections())[2]
    with pytest.raises(asyncart.InvalidInputError, match="of type 'dataset', not 'model'"):
        await api.artifact_collection("model", "ds")
    with pytest.raises(asyncart.NotFoundError, match="artifact demo/nope not found"):
        await api.artifact_collection("dataset", "nope")

    before = await ds.delete(dry_run=True)  # W&B's artifact_collection(type, name).delete()
    assert before.versions == 3 and len(await api.artifacts("dataset", "ds")) == 3
    await ds.delete(reason="done")
    assert [c.name for c in await dataset.collections()] == ["raw"]
    with pytest.raises(asyncart.DeletedError, match="the collection demo/ds was deleted"):
        await api.artifact_collection("dataset", "ds")
    with pytest.raises(asyncart.DeletedError):
        await api.artifacts("dataset", "ds")
    assert await api.artifact_versions("ds") == []
    await (await api.artifact_collection("model", "model")).delete()
    assert [t.name for t in await api.artifact_types()] == ["dataset"]


async def test_listing_types_and_collections_reads_notes_only(where: Where, files: Path) -> None:
    """Types and collections by type come from the streams' notes: no record is read, no
    stream listed, whatever the number of versions (through a server: one notes request)."""
    await _fill(where, files)
    counting = CountingStore(open_store(where.store, where.token))
    api = asyncart.Api("demo", store=counting)
    assert [t.name for t in await api.artifact_types()] == ["dataset", "model"]
    collections = await (await api.artifact_type("dataset")).collections()
    assert [c.name for c in collections] == ["ds", "raw"]
    assert len(await api.artifact_collections(type_name="model")) == 1
    assert counting.log.reads == Counter() and counting.log.listed == []
    assert counting.log.noted == ["demo/artifacts/"] * 4  # one listing of notes per call
    await api.artifact_collection("dataset", "ds")  # one collection: its stream alone
    assert set(counting.log.reads) == {"demo/artifacts/ds"}


def test_entity_paths_parse_and_the_entity_is_ignored() -> None:
    assert parse_ref("team/demo/ds:best") == ("demo", "ds", None, "best")
    assert parse_ref("team/demo/ds:v2") == parse_ref("demo/ds:v2") == ("demo", "ds", 2, None)
    with pytest.raises(asyncart.InvalidInputError, match=r"use \[\[entity/\]project/\]name"):
        parse_ref("a/team/demo/ds")
    with pytest.raises(asyncart.InvalidInputError, match="invalid entity"):
        parse_ref("-x/demo/ds")


async def test_entity_paths_resolve_everywhere(where: Where, files: Path) -> None:
    await _fill(where, files)
    api = _api(where)
    assert (await api.artifact("someone/demo/ds:v1")).version == "v1"
    assert await api.artifact_exists("someone/demo/ds:latest", type="dataset")
    assert await api.artifact_collection_exists("someone/demo/model")
    assert (await api.artifact_collection("model", "someone/demo/model")).name == "model"


ASYNCART = shutil.which("asyncart")


def _cli(store: str, *args: str) -> str:
    assert ASYNCART, "the asyncart console script is not installed (pip install -e .)"
    env = {**os.environ, asyncart.STORE_ENV: store}
    done = subprocess.run(
        [ASYNCART, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


@pytest.mark.allow_blocking  # runs the command
async def test_cli_ls_by_type(store: str, files: Path) -> None:
    await _fill(Where(store), files)
    assert _cli(store, "ls", "demo", "--type", "dataset", "-q") == "demo/ds\ndemo/raw\n"
    out = _cli(store, "ls", "--type", "model", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["name"], r["type"], r["versions"]) for r in rows] == [("model", "model", 1)]
    assert _cli(store, "ls", "--type", "weights") == "no artifacts of type weights\n"
    versions = _cli(store, "versions", "team/demo/ds", "-q")  # oldest first, as `log`
    assert versions.split() == ["demo/ds:v0", "demo/ds:v1", "demo/ds:v2"]
