"""The PostgreSQL + S3 store end to end: its location form, the seed flows, a copy from and
to a local store, and ``asyncart serve`` on it (tokens in the database)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import asyncart
from asyncart import InvalidInputError
from asyncart._backends.pg_s3 import PostgresS3Store, split_location

ASYNCART = shutil.which("asyncart", path=str(Path(sys.executable).parent)) or "asyncart"


def test_the_location_names_both_and_hides_the_password() -> None:
    dsn, blobs = split_location("postgresql://me:secret@db:5432/art?sslmode=require&blobs=s3://b/p")
    assert (dsn, blobs) == ("postgresql://me:secret@db:5432/art?sslmode=require", "s3://b/p")
    for location in (
        "postgresql://me:secret@db/art?blobs=s3://b/p",
        "postgresql://me@db/art?password=secret&blobs=s3://b/p",
        "postgresql://me@db/art?sslpassword=secret&sslmode=require&blobs=s3://b/p",
    ):
        store = PostgresS3Store(location)
        assert "secret" not in store.location and "secret" not in repr(store), store.location
        assert "***" in store.location
    for bad in (
        "postgresql://db/art",
        "postgresql://db/art?blobs=/tmp",
        "postgresql://db?blobs=s3://",
    ):
        with pytest.raises(InvalidInputError, match=r"blobs=s3://BUCKET/PREFIX"):
            PostgresS3Store(bad)


def test_connections_is_ours_and_checked() -> None:
    location = "postgresql://me@db/art?sslmode=require&connections=12&blobs=s3://b/p"
    assert split_location(location)[0] == "postgresql://me@db/art?sslmode=require"
    for bad in ("0", "1001", "x", "4&connections=5", ""):
        with pytest.raises(InvalidInputError, match="connections must be given once"):
            PostgresS3Store(f"postgresql://db/art?blobs=s3://b/p&connections={bad}")


@pytest.mark.parametrize("connections", [None, 7])
async def test_connections_bounds_the_pool(pg_s3_store: str, connections: int | None) -> None:
    """A server that many clients share opens as many connections as its location allows
    (default 4), no more."""
    location = pg_s3_store + (f"&connections={connections}" if connections else "")
    store = PostgresS3Store(location)
    pool = store.log._pool
    busy = peak = 0

    async def hold() -> None:
        nonlocal busy, peak
        async with pool.connection() as conn:
            busy += 1
            peak = max(peak, busy)
            await conn.execute("SELECT pg_sleep(0.05)")
            busy -= 1

    async with store.held():
        async with anyio.create_task_group() as tg:
            for _ in range(12):
                tg.start_soon(hold)
        assert peak == (connections or 4)


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


@pytest.mark.allow_blocking
def test_every_command_takes_the_store(pg_s3_store: str, files: Path, tmp_path: Path) -> None:
    """The CLI on PostgreSQL + S3, as a user runs it (``$ASYNCART_STORE``), tokens included."""
    env = {**os.environ, "ASYNCART_STORE": pg_s3_store}

    def run(*args: str) -> str:
        done = subprocess.run(
            [ASYNCART, *args], capture_output=True, text=True, env=env, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    run("put", str(files), "ds", "--type", "dataset", "--alias", "best")
    assert run("ls", "--quiet").split() == ["uncategorized/ds"]
    run("get", "ds:best", str(tmp_path / "out"))
    assert (tmp_path / "out" / "b.txt").read_text() == "beta\n"
    assert run("audit", "--read-data").rstrip().endswith(": OK")
    minted = run("token", "create", "--store", pg_s3_store, "--project", "demo", "--note", "ci")
    listed = [
        json.loads(line)
        for line in run("token", "list", "--store", pg_s3_store, "--json").splitlines()
    ]
    assert [(t["projects"], t["note"]) for t in listed] == [(["demo"], "ci")]
    run("token", "revoke", "--store", pg_s3_store, listed[0]["id"])
    assert run("token", "list", "--store", pg_s3_store, "--json") == ""
    assert minted.startswith("aat_")


@pytest.mark.allow_blocking
def test_errors_name_what_is_wrong_in_one_line(pg_s3_store: str, pg_server: str) -> None:
    env = {**os.environ}
    wrong_bucket = pg_s3_store.replace("blobs=s3://", "blobs=s3://no-such-bucket-")
    closed_port = "postgresql://postgres@127.0.0.1:1/x?blobs=s3://b/p"
    for location, why in [
        (wrong_bucket, "does not exist"),
        (closed_port, "127.0.0.1:1"),
    ]:
        done = subprocess.run(
            [ASYNCART, "put", "--store", location, str(Path(__file__)), "x", "--type", "t"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and why in lines[0] and "Traceback" not in done.stderr, lines


@pytest.mark.allow_blocking
def test_without_the_scale_extra_the_store_says_what_to_install() -> None:
    script = (
        "import sys; sys.modules['asyncpg'] = None\n"  # as if asyncpg were not installed
        "from asyncart._cli import main\n"
        "sys.exit(main(['ls', '--store', 'postgresql://x@127.0.0.1:1/db?blobs=s3://b/p']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "pip install 'asyncart[scale]'" in done.stderr and "Traceback" not in done.stderr
