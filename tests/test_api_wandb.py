"""Coming from W&B: the errors a W&B user's code catches as builtins keep being caught."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _serving import Server

import asyncart


async def test_remove_of_a_missing_path_is_a_file_not_found_error(files: Path) -> None:
    art = asyncart.Artifact("ds", "dataset")
    await art.add_file(files / "b.txt")
    with pytest.raises(FileNotFoundError, match="cannot remove 'nope.txt'"):
        art.remove("nope.txt")
    with pytest.raises(asyncart.NotFoundError):
        art.remove("dir/")
    art.remove("b.txt")  # what exists is still removed
    with pytest.raises(asyncart.MissingPathError):
        art.remove("b.txt")


@pytest.fixture(params=["local", "http"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    """A fresh local store, or the same through a real server (store, token)."""
    if request.param == "local":
        yield str(tmp_path / "store"), None
        return
    server = Server(tmp_path / "served").start()
    try:
        yield server.url, server.token("demo", write=True)
    finally:
        server.stop()


async def test_artifact_checks_the_type_and_artifact_exists(
    where: tuple[str, str | None], files: Path
) -> None:
    store, token = where
    art = asyncart.Artifact("ds", "dataset")
    await art.add_file(files / "b.txt")
    await art.save(project="demo", store=store, token=token)
    api = asyncart.Api("demo", store=store, token=token)
    assert (await api.artifact("ds:v0", type="dataset")).type == "dataset"
    with pytest.raises(asyncart.InvalidInputError, match="of type 'dataset', not 'model'"):
        await api.artifact("ds", type="model")
    assert await api.artifact_exists("ds")
    assert await api.artifact_exists("demo/ds:latest", type="dataset")
    assert not await api.artifact_exists("ds", type="model")
    assert not await api.artifact_exists("ds:v1")
    assert not await api.artifact_exists("other")
    await api.aclose()


async def test_artifact_collection_exists(where: tuple[str, str | None], files: Path) -> None:
    store, token = where
    art = asyncart.Artifact("ds", "dataset")
    await art.add_file(files / "b.txt")
    await art.save(project="demo", store=store, token=token)
    api = asyncart.Api("demo", store=store, token=token)
    assert await api.artifact_collection_exists("ds")
    assert await api.artifact_collection_exists("demo/ds", type="dataset")
    assert not await api.artifact_collection_exists("ds", type="model")
    assert not await api.artifact_collection_exists("other")
    with pytest.raises(asyncart.InvalidInputError, match="names a version"):
        await api.artifact_collection_exists("ds:v0")
    await api.aclose()


# -- errors a W&B user catches as builtins (see README "Errors") -----------------------------


def test_bad_metadata_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"metadata\['x'\]"):
        asyncart.Artifact("ds", "dataset", metadata={"x": object()})


async def test_no_distributed_id_outside_a_group_is_a_type_error(store: str, files: Path) -> None:
    """W&B raises TypeError when upsert/finish get no distributed id and the run no group."""
    art = asyncart.Artifact("shards", "dataset")
    await art.add_file(files / "a.txt")
    async with asyncart.init(project="demo", store=store) as run:
        for call in (run.upsert_artifact, run.finish_artifact, run.discard_artifact):
            with pytest.raises(TypeError, match="needs distributed_id=") as caught:
                await call(art)
            assert isinstance(caught.value, asyncart.MissingDistributedIdError)
            assert isinstance(caught.value, asyncart.InvalidInputError)  # as before
        await run.upsert_artifact(art, distributed_id="d")  # with one, it works
        await run.finish_artifact(asyncart.Artifact("shards", "dataset"), distributed_id="d")
    assert (await asyncart.Api("demo", store=store).artifact("shards")).version == "v0"


def test_sealed_error_is_not_an_attribute_error() -> None:
    """W&B's ArtifactFinalizedError is an AttributeError; ours is not on purpose: ``hasattr``
    and ``getattr(obj, name, default)`` would swallow it and hide the refusal."""
    assert not issubclass(asyncart.SealedError, AttributeError)
    assert issubclass(asyncart.SealedError, asyncart.AsyncartError)
