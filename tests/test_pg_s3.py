"""The PostgreSQL + S3 store end to end: its location form, the seed flows, a copy from and
to a local store, and ``asyncart serve`` on it (tokens in the database)."""

from __future__ import annotations

from pathlib import Path

import pytest

import asyncart
from asyncart import InvalidInputError
from asyncart._backends.pg_s3 import PostgresS3Store, split_location


def test_the_location_names_both_and_hides_the_password() -> None:
    dsn, blobs = split_location("postgresql://me:secret@db:5432/art?sslmode=require&blobs=s3://b/p")
    assert (dsn, blobs) == ("postgresql://me:secret@db:5432/art?sslmode=require", "s3://b/p")
    store = PostgresS3Store("postgresql://me:secret@db/art?blobs=s3://b/p")
    assert "secret" not in store.location and "secret" not in repr(store)
    for bad in (
        "postgresql://db/art",
        "postgresql://db/art?blobs=/tmp",
        "postgresql://db?blobs=s3://",
    ):
        with pytest.raises(InvalidInputError, match=r"blobs=s3://BUCKET/PREFIX"):
            PostgresS3Store(bad)


async def test_a_run_logs_and_reads_back(pg_s3_store: str, files: Path, tmp_path: Path) -> None:
    async with asyncart.init(project="demo", store=pg_s3_store) as run:
        art = asyncart.Artifact("ds", "dataset")
        await art.add_dir(files)
        logged = await run.log_artifact(art, aliases=["best"])
    assert logged.version == "v0"
    got = await asyncart.Api("demo", store=pg_s3_store).artifact("ds:best")
    await got.download(tmp_path / "out")
    assert (tmp_path / "out" / "a.txt").read_text() == "alpha\n"
    assert (await asyncart.audit(store=pg_s3_store, read_data=True)).ok


async def test_copy_local_to_pg_s3_and_back(pg_s3_store: str, files: Path, tmp_path: Path) -> None:
    local, back = str(tmp_path / "local"), str(tmp_path / "back")
    art = asyncart.Artifact("ds", "dataset")
    await art.add_dir(files)
    v0 = await art.save(project="demo", store=local)
    draft = v0.new_draft()
    draft.remove("a.txt")
    await draft.save()
    there = await asyncart.copy_store(local, pg_s3_store)
    assert there.blobs == 6
    assert (await asyncart.audit(store=pg_s3_store, read_data=True)).ok
    home = await asyncart.copy_store(pg_s3_store, back)
    assert (home.records, home.blobs) == (there.records, 6)
    src, dst = asyncart.LocalStore(local).log, asyncart.LocalStore(back).log
    for stream in await src.streams(""):
        assert await dst.read(stream) == await src.read(stream)
    assert (await asyncart.copy_store(local, pg_s3_store)).records == 0  # resumed: all there
