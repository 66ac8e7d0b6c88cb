"""Many processes on one PostgreSQL + S3 store, directly and through two server replicas.

The scenarios of ``test_multiprocess`` (8 processes upsert one version, 6 race ``log_artifact``)
run on the store directly; then through two ``asyncart serve`` processes on it, the workers
split between them (tokens live in the database: one token works on both), and with one
replica killed in the middle of an upload while the other carries on.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import test_multiprocess
from _serving import Server
from test_multiprocess import (
    PROJECT,
    assert_audit_ok,
    big_files,
    entries,
    expected,
    part_files,
    run_together,
    run_worker,
    worker_command,
    write_tree,
)

import asyncart
from asyncart._backends._wire import TOKEN_ENV

MiB = 1 << 20

test_upserts_from_8_processes_commit_one_version_with_the_union = (
    test_multiprocess.test_upserts_from_8_processes_commit_one_version_with_the_union
)
test_concurrent_log_artifact_from_6_processes_gives_v0_to_v5 = (
    test_multiprocess.test_concurrent_log_artifact_from_6_processes_gives_v0_to_v5
)


@pytest.fixture
def store(pg_s3_store: str) -> str:
    """The store of the scenarios above: PostgreSQL + S3, used directly by every worker (which
    inherit the S3 endpoint and credentials from the environment)."""
    return pg_s3_store


@pytest.fixture
def replicas(
    pg_s3_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Server, Server]]:
    """Two servers of one PostgreSQL + S3 store, and a token (minted through the first) that
    the workers inherit."""
    a = Server(tmp_path / "replica-a", store=pg_s3_store).start()
    b = Server(tmp_path / "replica-b", store=pg_s3_store).start()
    monkeypatch.setenv(TOKEN_ENV, a.token(PROJECT, write=True))
    yield a, b
    a.stop()
    b.stop()


async def test_8_upserters_split_across_two_replicas_make_one_version(
    tmp_path: Path, replicas: tuple[Server, Server], pg_s3_store: str
) -> None:
    a, b = replicas
    name, group = "shards", "job-7"
    parts = [write_tree(tmp_path / f"src{i}", part_files(i)) for i in range(8)]
    union = {rel: data for part in parts for rel, data in part.items()}
    jobs = [
        dict(
            mode="upsert",
            name=name,
            store=(a, b)[i % 2].url,
            group=group,
            files=f"{tmp_path}/src{i}",
        )
        for i in range(8)
    ]
    results = await run_together(tmp_path, jobs)
    assert len({r["run"] for r in results}) == 8
    done = await run_worker(mode="finish", name=name, store=b.url, group=group)
    assert done["version"] == "v0"
    for server in (a, b):
        v0 = await asyncart.Api(PROJECT, store=server.url).artifact(f"{name}:v0")
        assert entries(v0) == expected(union)
    await assert_audit_ok(pg_s3_store, versions=1)


async def test_a_replica_killed_mid_upload_and_the_other_carries_on(
    tmp_path: Path, replicas: tuple[Server, Server], pg_s3_store: str
) -> None:
    a, b = replicas
    want = big_files(tmp_path / "big", 24, 4 * MiB)
    other = write_tree(
        tmp_path / "small", {f"s{i}.txt": f"small {i}\n".encode() for i in range(20)}
    )
    ingest = worker_command(mode="ingest", name="big", store=a.url, files=str(tmp_path / "big"))
    async with await anyio.open_process(ingest) as proc:
        assert proc.stdout is not None
        seen = b""
        with anyio.fail_after(120):
            while b"uploading\n" not in seen:
                seen += await proc.stdout.receive()
        a.stop(signal.SIGKILL)  # mid-upload: its client's requests fail from here on
        beside = await run_worker(
            mode="log", name="small", store=b.url, files=str(tmp_path / "small")
        )
        assert beside["version"] == "v0"
        with anyio.fail_after(120):
            code = await proc.wait()
    assert code != 0  # the ingest through the killed replica failed; nothing was committed
    with pytest.raises(asyncart.NotFoundError):
        await asyncart.Api(PROJECT, store=b.url).artifact("big")
    again = await run_worker(mode="log", name="big", store=b.url, files=str(tmp_path / "big"))
    assert again["version"] == "v0"
    api = asyncart.Api(PROJECT, store=b.url)
    assert entries(await api.artifact("big:v0")) == want
    assert entries(await api.artifact("small:v0")) == expected(other)
    await assert_audit_ok(pg_s3_store, versions=2)
