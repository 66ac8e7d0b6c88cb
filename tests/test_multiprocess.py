"""Many real OS processes sharing one local store: concurrency, crashes and torn log tails.

Every scenario runs separate Python processes (``sys.executable -c WORKER``), never threads, so
the only things they share are the store's files: its ``flock``-ed log and its blob directory.
Workers that must overlap wait at a barrier (a "go" file) after their setup (hashing) is done,
then all write at once. Each worker prints one JSON line (its run id, the version it got ...).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import blake3
import pytest

import asyncart
from asyncart._backends import local_blobs, local_log
from asyncart._backends._framing import scan

PROJECT = "demo"
TYPE = "dataset"
MiB = 1 << 20

# The worker: one process, one run. Arguments come as one JSON object in argv[1].
WORKER = r"""
import asyncio, json, os, sys, time
import asyncart

args = json.loads(sys.argv[1])


def barrier():
    if not args.get("go"):
        return
    open(args["ready"], "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(args["go"]):
        if time.monotonic() > deadline:
            sys.exit("the barrier never opened")
        time.sleep(0.001)


def die_before_flush():
    # Simulates a kill -9 that lands after the blobs were renamed into place, before flush().
    from asyncart._backends.local_blobs import LocalBlobStore

    async def flush(self):
        os.kill(os.getpid(), 9)

    LocalBlobStore.flush = flush


async def main():
    mode, name, store = args["mode"], args["name"], args["store"]
    artifact = asyncart.Artifact(name, args.get("type", "dataset"), metadata=args.get("metadata"))
    if args.get("files"):
        await artifact.add_dir(args["files"])
    if mode == "die_before_flush":
        die_before_flush()
    barrier()
    out = {"start": time.time()}
    async with asyncart.init(project="demo", group=args.get("group"), store=store) as run:
        out["run"] = run.id
        if mode == "upsert":
            await run.upsert_artifact(artifact)
        elif mode == "finish":
            logged = await run.finish_artifact(artifact)
            out.update(version=logged.version, digest=logged.digest)
        elif mode in ("log", "die_before_flush"):
            logged = await run.log_artifact(artifact)
            out.update(version=logged.version, digest=logged.digest)
        elif mode == "ingest":  # a slow, sequential upload that tells when it has begun
            told = []

            def progress(p):
                if p.files_done and not told:  # the first call only announces the totals
                    told.append(p)
                    print("uploading", flush=True)

            logged = await run.log_artifact(artifact, progress=progress, concurrency=1)
            out.update(version=logged.version, digest=logged.digest)
        elif mode == "read_then_log":
            try:
                latest = await asyncart.Api("demo", store=store).artifact(name)
                out["read"] = {"version": latest.version, "files": sorted(latest.manifest.entries)}
            except asyncart.NotFoundError:
                out["read"] = None
            logged = await run.log_artifact(artifact)
            out.update(version=logged.version, digest=logged.digest)
        else:
            sys.exit(f"unknown mode {mode}")
    out["end"] = time.time()
    print(json.dumps(out), flush=True)


asyncio.run(main())
"""


# -- helpers --------------------------------------------------------------------------------


def write_tree(root: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    """Write ``files`` (entry path -> bytes) under ``root``; return them."""
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def expected(files: dict[str, bytes]) -> dict[str, tuple[str, int]]:
    """What a manifest must say about ``files``: entry path -> (BLAKE3 hex, size)."""
    return {rel: (blake3.blake3(data).hexdigest(), len(data)) for rel, data in files.items()}


def entries(artifact: asyncart.Artifact) -> dict[str, tuple[str, int]]:
    return {path: (e.digest, e.size) for path, e in artifact.manifest.entries.items()}


def worker_command(**args: Any) -> list[str]:
    return [sys.executable, "-c", WORKER, json.dumps(args)]


def result_of(done: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    """The JSON line a worker printed last; fails with its stderr if it did not succeed."""
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 0, f"worker failed ({done.returncode}):\n{stderr}"
    result: dict[str, Any] = json.loads(done.stdout.decode().splitlines()[-1])
    return result


async def run_worker(**args: Any) -> dict[str, Any]:
    with anyio.fail_after(120):
        return result_of(await anyio.run_process(worker_command(**args), check=False))


async def run_together(tmp_path: Path, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Start one process per job; let them all go at once, after every one has done its setup."""
    sync = tmp_path / "barrier"
    sync.mkdir()
    go = sync / "go"
    done: dict[int, subprocess.CompletedProcess[bytes]] = {}

    async def one(i: int, job: dict[str, Any]) -> None:
        command = worker_command(**job, ready=str(sync / f"ready-{i}"), go=str(go))
        done[i] = await anyio.run_process(command, check=False)

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for i, job in enumerate(jobs):
                tg.start_soon(one, i, job)
            while True:  # poll: the workers are other processes (one that died counts)
                if len(list(sync.glob("ready-*"))) + len(done) >= len(jobs):
                    break
                await anyio.sleep(0.01)
            go.touch()
    return [result_of(done[i]) for i in range(len(jobs))]


def overlap(results: list[dict[str, Any]]) -> str:
    """How much the workers' runs overlapped in time (for the test output)."""
    starts, ends = [r["start"] for r in results], [r["end"] for r in results]
    return (
        f"{len(results)} runs started within {1000 * (max(starts) - min(starts)):.0f} ms, "
        f"all done {1000 * (max(ends) - min(starts)):.0f} ms after the first start"
    )


async def assert_audit_ok(store: str, versions: int | None = None) -> asyncart.AuditReport:
    report = await asyncart.audit(PROJECT, store=store)
    assert report.ok, str(report)
    if versions is not None:
        assert report.versions == versions, str(report)
    return report


async def assert_not_visible(store: str, name: str) -> None:
    api = asyncart.Api(PROJECT, store=store)
    with pytest.raises(asyncart.NotFoundError):
        await api.artifact(name)
    assert await api.artifact_versions(name) == []


async def download_and_check(
    artifact: asyncart.Artifact, root: Path, files: dict[str, bytes]
) -> None:
    """Download, verify, and compare the bytes with the originals, independently of asyncart."""
    out = await artifact.download(root)
    await artifact.verify(out)
    found = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert found == set(files)
    for rel, data in files.items():
        assert (out / rel).read_bytes() == data, rel


def stream_log(store: str, name: str) -> Path:
    return Path(store) / "log" / PROJECT / "artifacts" / f"{name}.log"


# -- distributed artifacts: upserts from many processes ---------------------------------------


def part_files(i: int) -> dict[str, bytes]:
    """Process ``i``'s own files, plus one path that every process adds with identical bytes."""
    own = {f"part{i}/f{j}.bin": f"part {i} file {j}\n".encode() * (50 + 37 * j) for j in range(3)}
    return {**own, "shared/common.txt": b"the same bytes in every process\n"}


async def test_upserts_from_8_processes_commit_one_version_with_the_union(
    tmp_path: Path, store: str
) -> None:
    name, group = "shards", "job-42"
    parts = [write_tree(tmp_path / f"src{i}", part_files(i)) for i in range(8)]
    union = {rel: data for part in parts for rel, data in part.items()}
    jobs = [
        dict(mode="upsert", name=name, store=store, group=group, files=str(tmp_path / f"src{i}"))
        for i in range(8)
    ]

    results = await run_together(tmp_path, jobs)
    print(overlap(results))
    assert len({r["run"] for r in results}) == 8
    await assert_not_visible(store, name)  # nothing is a version before finish
    await assert_audit_ok(store, versions=0)

    async with asyncart.init(project=PROJECT, group=group, store=store) as run:
        v0 = await run.finish_artifact(asyncart.Artifact(name, TYPE))
    assert v0.version == "v0"
    assert entries(v0) == expected(union)  # exactly the union: nothing lost, nothing extra
    assert len(v0.manifest) == 8 * 3 + 1
    assert (await asyncart.Api(PROJECT, store=store).artifact(name)).version == "v0"
    await download_and_check(v0, tmp_path / "out-v0", union)
    await assert_audit_ok(store, versions=1)

    # The draft was closed by finish: the same distributed_id now starts a new, empty draft.
    later = write_tree(tmp_path / "later", {"later/new.txt": b"added after v0\n"})
    async with asyncart.init(project=PROJECT, group=group, store=store) as run:
        part = asyncart.Artifact(name, TYPE)
        await part.add_dir(tmp_path / "later")
        await run.upsert_artifact(part)
    api = asyncart.Api(PROJECT, store=store)
    assert (await api.artifact(name)).version == "v0"  # the new draft is not visible yet
    with pytest.raises(asyncart.NotFoundError):
        await api.artifact(f"{name}:v1")
    async with asyncart.init(project=PROJECT, group=group, store=store) as run:
        v1 = await run.finish_artifact(asyncart.Artifact(name, TYPE))
    assert v1.version == "v1"
    assert entries(v1) == expected(later)  # only the new files (W&B semantics)
    assert entries(await api.artifact(f"{name}:v0")) == expected(union)  # v0 never changes
    await download_and_check(v1, tmp_path / "out-v1", later)
    await assert_audit_ok(store, versions=2)


# -- concurrent log_artifact of one name ------------------------------------------------------


def logger_files(i: int) -> dict[str, bytes]:
    return {
        f"w{i}/data.bin": os.urandom(1000 + i),
        f"w{i}/label.txt": f"worker {i}\n".encode(),
        "common.txt": b"identical in every version\n",  # the same blob, stored concurrently
    }


async def test_concurrent_log_artifact_from_6_processes_gives_v0_to_v5(
    tmp_path: Path, store: str
) -> None:
    name = "model"
    sources = [write_tree(tmp_path / f"src{i}", logger_files(i)) for i in range(6)]
    jobs = [
        dict(mode="log", name=name, store=store, files=str(tmp_path / f"src{i}")) for i in range(6)
    ]

    results = await run_together(tmp_path, jobs)
    print(overlap(results))
    got = [r["version"] for r in results]
    assert sorted(got, key=lambda v: int(v[1:])) == [f"v{n}" for n in range(6)], got  # unique

    api = asyncart.Api(PROJECT, store=store)
    versions = await api.artifact_versions(name)
    assert [v.version for v in versions] == [f"v{n}" for n in reversed(range(6))]  # gap-free
    assert (await api.artifact(name)).version == "v5"
    for files, result in zip(sources, results, strict=True):
        mine = await api.artifact(f"{name}:{result['version']}")
        assert entries(mine) == expected(files), result  # exactly what this process added
        assert mine.digest == result["digest"]
        logged_by = await mine.logged_by()
        assert logged_by is not None and logged_by.id == result["run"]
        run = await api.run(result["run"])
        assert run.logged == ((name, int(result["version"][1:])),) and run.finished
    await download_and_check(versions[2], tmp_path / "out", sources[got.index("v3")])  # v3
    await assert_audit_ok(store, versions=6)


# -- a process killed in the middle of a large ingest -----------------------------------------


def big_files(root: Path, count: int, size: int) -> dict[str, tuple[str, int]]:
    """``count`` distinct files of ``size`` bytes; returns their expected entries."""
    root.mkdir(parents=True)
    block = bytearray(os.urandom(size))
    out = {}
    for i in range(count):
        block[:8] = i.to_bytes(8, "little")  # distinct content, cheap to make
        (root / f"part-{i:03}.bin").write_bytes(block)
        out[f"part-{i:03}.bin"] = (blake3.blake3(block).hexdigest(), size)
    return out


def stored_blobs(store: str) -> set[str]:
    blobs = Path(store) / "blobs"
    return {p.name for p in blobs.glob("??/*")} if blobs.is_dir() else set()


async def kill_once_uploading(command: list[str]) -> tuple[bytes, bytes]:
    """Start ``command``; SIGKILL it as soon as it prints 'uploading'; return its output."""
    out = b""
    with anyio.fail_after(120):
        async with await anyio.open_process(command) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            try:
                while b"uploading\n" not in out:
                    out += await proc.stdout.receive()
            except anyio.EndOfStream:
                pass
            with contextlib.suppress(ProcessLookupError):  # it may have died on its own
                proc.send_signal(signal.SIGKILL)
            code = await proc.wait()
            err = b"".join([chunk async for chunk in proc.stderr])
    assert code == -signal.SIGKILL, f"worker was not killed ({code}): {err.decode()}"
    assert b"uploading\n" in out and b'"version"' not in out, out
    return out, err


async def test_sigkill_during_a_large_ingest_leaves_a_consistent_store(
    tmp_path: Path, store: str
) -> None:
    name, count = "big", 50
    want = big_files(tmp_path / "big", count, 4 * MiB)  # 200 MiB in 50 files

    await kill_once_uploading(
        worker_command(mode="ingest", name=name, store=store, files=str(tmp_path / "big"))
    )
    left = stored_blobs(store) & {digest for digest, _ in want.values()}
    assert 0 < len(left) < count, f"killed after {len(left)} of {count} blobs: not mid-ingest"
    await assert_not_visible(store, name)  # no version was committed
    await assert_audit_ok(store, versions=0)

    again = await run_worker(mode="log", name=name, store=store, files=str(tmp_path / "big"))
    assert again["version"] == "v0"
    v0 = await asyncart.Api(PROJECT, store=store).artifact(f"{name}:v0")
    assert entries(v0) == want
    assert {digest for digest, _ in want.values()} <= stored_blobs(store)
    await assert_audit_ok(store, versions=1)
    for big in (tmp_path / "big", Path(store)):  # 400 MiB: not kept in /tmp after the test
        shutil.rmtree(big)


@pytest.fixture
def trace(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str]]]:
    """Records, in order, every blob-store sync and every log append made by this process."""
    events: list[tuple[str, str]] = []

    def spy(method: Callable[..., Any], what: str) -> Callable[..., Any]:
        def wrapper(self: Any, *args: Any) -> Any:
            result = method(self, *args)
            events.append((what, args[0] if args else ""))
            return result

        return wrapper

    monkeypatch.setattr(
        local_blobs.LocalBlobStore, "_sync", spy(local_blobs.LocalBlobStore._sync, "sync")
    )
    monkeypatch.setattr(
        local_log.LocalEventLog, "_append", spy(local_log.LocalEventLog._append, "append")
    )
    yield events


async def test_blobs_left_by_a_killed_process_are_durable_before_they_are_referenced(
    tmp_path: Path, store: str, trace: list[tuple[str, str]]
) -> None:
    """A process renames its blobs into place, then is killed before ``flush()`` (no sync).

    The next log of the same files finds every blob present and uploads nothing, but it still
    must make them durable (sync) before it appends events that reference them: the protocol
    is "blobs durable before any event references them", and nobody synced these.
    """
    name = "orphans"
    files = write_tree(tmp_path / "src", {f"f{i}.bin": os.urandom(5000) for i in range(5)})
    died = await anyio.run_process(
        worker_command(
            mode="die_before_flush", name=name, store=store, files=str(tmp_path / "src")
        ),
        check=False,
    )
    assert died.returncode == -signal.SIGKILL, died.stderr.decode()
    assert {d for d, _ in expected(files).values()} <= stored_blobs(store)  # renamed, unsynced
    await assert_not_visible(store, name)

    async with asyncart.init(project=PROJECT, store=store) as run:
        artifact = asyncart.Artifact(name, TYPE)
        await artifact.add_dir(tmp_path / "src")
        v0 = await run.log_artifact(artifact)
    assert v0.version == "v0" and entries(v0) == expected(files)
    commit = trace.index(("append", f"{PROJECT}/artifacts/{name}"))
    assert ("sync", "") in trace[:commit], (
        f"v0 references blobs that no process ever synced: {trace}"
    )
    await assert_audit_ok(store, versions=1)


# -- torn tails: a crash in the middle of an append -------------------------------------------


def tear(path: Path, how: str) -> bytes:
    """Append the kind of garbage a crash mid-append leaves; return the good bytes before it."""
    good = path.read_bytes()
    header = good[:12]
    first_length = int.from_bytes(good[:4], "little") & 0x7FFF_FFFF  # the top bit is a flag
    garbage = {
        "partial-header": header[:7],  # the first 7 bytes of a valid frame header
        "frame-longer-than-file": header + good[12:17],  # a full header, 5 bytes of payload
        "payload-not-yet-written": header + b"\0" * first_length,  # length ok, bytes missing
        "zeros": b"\0" * 4096,  # the file grew, but no data reached it
    }[how]
    with path.open("ab") as f:
        f.write(garbage)
    assert path.stat().st_size == len(good) + len(garbage)
    return good


@pytest.mark.parametrize(
    "how", ["partial-header", "frame-longer-than-file", "payload-not-yet-written", "zeros"]
)
async def test_torn_tail_is_ignored_by_readers_and_truncated_by_the_next_append(
    tmp_path: Path, store: str, how: str
) -> None:
    name = "torn"
    first = write_tree(tmp_path / "one", {"a.txt": b"first version\n"})
    second = write_tree(tmp_path / "two", {"b.txt": b"second version\n"})
    async with asyncart.init(project=PROJECT, store=store) as run:
        artifact = asyncart.Artifact(name, TYPE)
        await artifact.add_dir(tmp_path / "one")
        await run.log_artifact(artifact)
    path = stream_log(store, name)
    good = tear(path, how)
    good_frames = scan(good, 0, 0, name)
    assert not good_frames.torn

    result = await run_worker(
        mode="read_then_log", name=name, store=store, files=str(tmp_path / "two")
    )
    assert result["read"] == {"version": "v0", "files": ["a.txt"]}  # the torn bytes were ignored
    assert result["version"] == "v1"

    data = path.read_bytes()
    assert data.startswith(good)
    frames = scan(data, 0, 0, name)
    assert not frames.torn and frames.end == len(data)  # the garbage is gone ...
    assert frames.offsets[len(good_frames.offsets)] == len(good)  # ... the record follows it
    api = asyncart.Api(PROJECT, store=store)
    assert entries(await api.artifact(f"{name}:v0")) == expected(first)
    assert entries(await api.artifact(f"{name}:v1")) == expected(second)
    await assert_audit_ok(store, versions=2)


async def test_a_torn_multi_record_append_is_ignored_as_a_whole(tmp_path: Path, store: str) -> None:
    """One upsert is one batch of records, appended "atomically" by one ``pwrite``.

    A crash can cut that write anywhere (SIGKILL during a large buffered write returns a short
    write; so does a power cut): here the batch's first ``FilesAdded`` frame reached the file, its
    second did not. That upsert never succeeded, so none of its files may reach the version; if
    its complete frames were replayed, v0 would hold part of an upload that failed.
    """
    name, group = "batch", "g"
    ok_part = write_tree(tmp_path / "ok", {"ok/a.txt": b"a fully upserted part\n"})
    async with asyncart.init(project=PROJECT, group=group, store=store) as run:
        part = asyncart.Artifact(name, TYPE)
        await part.add_dir(tmp_path / "ok")
        await run.upsert_artifact(part)
    path = stream_log(store, name)
    before = path.stat().st_size
    head = path.with_suffix(".head")
    acknowledged = head.read_bytes()  # the head before the second upsert

    # A part big enough to need two FilesAdded records (one per ENTRIES_PER_EVENT entries).
    from asyncart._repository import ENTRIES_PER_EVENT

    # (Same bytes in every file: one blob to store, so this stays fast.)
    write_tree(tmp_path / "torn", {f"t{i:05}": b"torn\n" for i in range(ENTRIES_PER_EVENT + 1)})
    async with asyncart.init(project=PROJECT, group=group, store=store) as run:
        part = asyncart.Artifact(name, TYPE)
        await part.add_dir(tmp_path / "torn")
        await run.upsert_artifact(part)
    frames = scan(path.read_bytes(), 0, 0, name)
    batch = [offset for offset in frames.offsets if offset >= before]
    assert len(batch) >= 2, "the second upsert should be one batch of several records"
    os.truncate(path, batch[1] + 7)  # the crash: the batch's first frame written, the rest torn
    head.write_bytes(acknowledged)  # ... and the append never returned (its head not written)

    result = await run_worker(mode="finish", name=name, store=store, group=group)
    assert result["version"] == "v0"
    v0 = await asyncart.Api(PROJECT, store=store).artifact(f"{name}:v0")
    leaked = sorted(set(v0.manifest.entries) - set(ok_part))
    assert not leaked, (
        f"v0 holds {len(leaked)} files ({', '.join(leaked[:3])} ...) of an upsert whose append "
        "was torn (it never completed)"
    )
    assert entries(v0) == expected(ok_part)
    await assert_audit_ok(store, versions=1)
