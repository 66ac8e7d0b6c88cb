"""Audit streams: records in ranges, blobs in bounded batches, checkpoints checked, progress.

What it finds is what the whole-store audit found; what it holds at once is bounded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import anyio
import msgspec
import pytest
from _records import CountingLog, CountingStore
from _serving import Server
from test_audit import _rewrite
from test_listing import _copy

import asyncart
import asyncart._audit
from asyncart._backends._wire import TOKEN_ENV
from asyncart._backends.base import Store
from asyncart._backends.local import LocalStore
from asyncart._domain.checkpoint import CHECKPOINT_EVERY, decode_checkpoint, encode_checkpoint
from asyncart._domain.events import decode, encode

STREAM = "demo/artifacts/ds"


class CountingBlobs:
    """Delegates to a real blob store, remembering the size of each ``missing`` batch."""

    def __init__(self, inner: asyncart.BlobStore, events: list[tuple[str, object]]) -> None:
        self.inner, self.events = inner, events

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def missing(self, sizes: Mapping[str, int]) -> set[str]:
        self.events.append(("missing", len(sizes)))
        return await self.inner.missing(sizes)


class EventLog(CountingLog):
    """A :class:`CountingLog` that also writes each read, in order, to ``events``."""

    def __init__(self, inner: asyncart.EventLog, events: list[tuple[str, object]]) -> None:
        super().__init__(inner)
        self.events = events

    async def read(self, stream: str, from_seq: int = 0, limit: int | None = None) -> list[bytes]:
        self.events.append(("read", (stream, from_seq, limit)))
        return await super().read(stream, from_seq, limit)


async def _versions(store: str, files: Path, tmp_path: Path, count: int) -> None:
    """demo/ds: ``files``, then ``count - 1`` incremental versions that each change a.txt."""
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_dir(files)
    version = await artifact.save(project="demo", store=store)
    for i in range(count - 1):
        draft = version.new_draft()
        (tmp_path / "n.txt").write_text(f"change {i}\n")
        await draft.add_file(tmp_path / "n.txt", "a.txt", overwrite=True)
        version = await draft.save()


def _watched(root: str) -> tuple[Store, list[tuple[str, object]]]:
    events: list[tuple[str, object]] = []
    store = CountingStore(LocalStore(root))
    store.log = EventLog(store.inner.log, events)
    store.blobs = CountingBlobs(store.inner.blobs, events)  # type: ignore[assignment]
    return store, events


async def _three_collections(store: str, tmp_path: Path) -> None:
    """demo/c0..c2, each 4 files of its own content; c1 has a second version (one changed)."""
    for c in range(3):
        root = tmp_path / f"c{c}"
        root.mkdir()
        for i in range(4):
            (root / f"f{i}.txt").write_text(f"collection {c} file {i}\n")
        artifact = asyncart.Artifact(f"c{c}", "dataset")
        await artifact.add_dir(root)
        version = await artifact.save(project="demo", store=store)
        if c == 1:
            draft = version.new_draft()
            (tmp_path / "changed.txt").write_text("changed\n")
            await draft.add_file(tmp_path / "changed.txt", "f0.txt", overwrite=True)
            await draft.save()


# -- bounded memory -------------------------------------------------------------------------


async def test_blobs_are_checked_in_bounded_batches_as_streams_go(store, tmp_path, monkeypatch):
    await _three_collections(store, tmp_path)
    whole = await asyncart.audit("demo", store=store)
    assert whole.ok and whole.blobs == 13  # 3 x 4, and the one file c1:v1 changed
    monkeypatch.setattr(asyncart._audit, "BLOB_BATCH", 3)
    watched, events = _watched(store)
    report = await asyncart.audit("demo", store=watched)
    assert report.ok and (report.blobs, report.versions) == (13, 4)
    batches = [n for kind, n in events if kind == "missing"]
    assert batches == [3, 3, 3, 3, 1]  # never more than a batch held; c1:v1 brings only 1
    first_check = events.index(("missing", 3))
    last_stream_read = max(
        i for i, (kind, what) in enumerate(events) if kind == "read" and "c2" in str(what)
    )
    assert first_check < last_stream_read  # checked as it goes, not at the end of the store


async def test_a_missing_blob_is_named_whichever_batch_holds_it(store, tmp_path, monkeypatch):
    await _three_collections(store, tmp_path)
    v0 = await asyncart.Api("demo", store=store).artifact("c1:v0")
    digest = v0.manifest.entries["f2.txt"].digest
    (Path(store) / "blobs" / digest[:2] / digest).unlink()
    monkeypatch.setattr(asyncart._audit, "BLOB_BATCH", 2)
    report = await asyncart.audit("demo", store=store)
    [problem] = report.problems
    assert (problem.stream, problem.seq) == ("demo/artifacts/c1", 4)
    assert f"blob {digest} of c1:v0/f2.txt is missing" in problem.message


async def test_a_version_checks_only_the_blobs_its_parent_lacks(store, files, tmp_path):
    await _versions(store, files, tmp_path, 6)
    watched, events = _watched(store)
    report = await asyncart.audit("demo", store=watched)
    assert report.ok and report.versions == 6
    assert report.blobs == 6 + 5  # v0's six files, then the one new file of each version
    assert sum(n for kind, n in events if kind == "missing") == report.blobs


async def test_records_are_read_in_ranges(store, tmp_path, monkeypatch):
    await _three_collections(store, tmp_path)
    whole = await asyncart.audit("demo", store=store)
    monkeypatch.setattr(asyncart._audit, "READ_CHUNK", 4)
    watched, events = _watched(store)
    report = await asyncart.audit("demo", store=watched)
    assert (report.records, report.versions, report.blobs) == (
        whole.records,
        whole.versions,
        whole.blobs,
    )
    reads = [what for kind, what in events if kind == "read"]
    assert all(limit is not None and limit <= 4 for _, _, limit in reads)  # type: ignore[misc]
    assert len([r for r in reads if r[0] == "demo/artifacts/c1"]) >= 10 // 4  # type: ignore[index]
    first = await asyncart.audit("demo", store=store, as_of=4)  # seq 4 commits each v0
    assert [c.versions for c in first.collections] == [1, 1, 1]


def _retimed(seq: int, payload: bytes) -> bytes:
    record = decode(payload, "demo/artifacts/c1", seq)
    return encode(msgspec.structs.replace(record, time=record.time + 1)) if seq == 5 else payload


async def test_an_altered_record_at_the_end_of_a_range_is_named(store, tmp_path, monkeypatch):
    """Seq 5 ends the third range of two: its link is checked from the next range."""
    await _three_collections(store, tmp_path)
    _rewrite(Path(store) / "log" / "demo" / "artifacts" / "c1.log", _retimed)
    monkeypatch.setattr(asyncart._audit, "READ_CHUNK", 2)
    report = await asyncart.audit("demo", store=store)
    messages = [str(p) for p in report.problems]
    assert messages == [
        "demo/artifacts/c1 seq 5: record was altered: its hash " + messages[0].split("its hash ")[1]
    ]


async def test_a_long_history_is_replayed_from_few_reads(store, files, tmp_path):
    """Thirty versions of one change each: pass one reads growing ranges, pass two fetches
    every version's changes in one read, not one read per version."""
    await _versions(store, files, tmp_path, 30)
    watched, events = _watched(store)
    report = await asyncart.audit("demo", store=watched)
    assert report.ok and report.versions == 30
    reads = [what for kind, what in events if kind == "read"]
    assert len(reads) <= 7, reads  # 16, 32, 64, 128 records, the empty end, one window


async def test_interleaved_distributed_drafts_replay_right(store, tmp_path):
    """Two drafts filled turn by turn: each version's change records are among the other's."""
    parts = tmp_path / "parts"
    parts.mkdir()
    async with asyncart.init(project="demo", store=store) as run:
        for turn in range(3):
            for group in ("g1", "g2"):
                (parts / f"{group}-{turn}.txt").write_text(f"{group} part {turn}\n")
                part = asyncart.Artifact("dist", "dataset")
                await part.add_file(parts / f"{group}-{turn}.txt")
                await run.upsert_artifact(part, group)
        second = await run.finish_artifact(asyncart.Artifact("dist", "dataset"), "g2")
        first = await run.finish_artifact(asyncart.Artifact("dist", "dataset"), "g1")
    assert (second.version, first.version) == ("v0", "v1")
    report = await asyncart.audit("demo", store=store)
    assert report.ok and (report.versions, report.blobs) == (2, 6), str(report)
    digest = first.manifest.entries["g1-1.txt"].digest
    await anyio.Path(store, "blobs", digest[:2], digest).unlink()
    [problem] = (await asyncart.audit("demo", store=store)).problems
    assert "dist:v1/g1-1.txt is missing" in problem.message


# -- checkpoints ----------------------------------------------------------------------------


async def _checkpointed(store: str, files: Path) -> bytes:
    """ds:v0 with as many aliases moved onto it as make a checkpoint; its checkpoint."""
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_dir(files)
    version = await artifact.save(project="demo", store=store)
    for i in range(CHECKPOINT_EVERY):
        version = await version.set_aliases(add=[f"a{i}"])
    await asyncart.Api("demo", store=store).artifact("ds")  # a fresh read past the boundary
    data = await LocalStore(store).log.checkpoint(STREAM)
    assert data is not None
    return data


async def test_a_good_checkpoint_passes(store, files):
    await _checkpointed(store, files)
    report = await asyncart.audit("demo", store=store)
    assert report.ok, str(report)


async def test_a_damaged_checkpoint_is_named_and_rewritten_by_the_next_read(store, files):
    data = await _checkpointed(store, files)
    await LocalStore(store).log.put_checkpoint(STREAM, data[:-1] + bytes([data[-1] ^ 1]))
    [problem] = (await asyncart.audit("demo", store=store)).problems
    assert problem.stream == STREAM
    assert "checkpoint" in problem.message and "fails its checksum" in problem.message
    assert "only costs a longer read" in problem.message
    fresh = await asyncart.Api("demo", store=store).artifact("ds:a7")
    assert fresh.version == "v0" and len(fresh.aliases) == CHECKPOINT_EVERY + 1
    assert (await asyncart.audit("demo", store=store)).ok


async def test_a_checkpoint_that_disagrees_with_the_records_is_named(store, files):
    data = await _checkpointed(store, files)
    state = decode_checkpoint(data, STREAM)
    state.aliases["forged"] = 0
    state.versions[0].aliases.add("forged")
    await LocalStore(store).log.put_checkpoint(STREAM, encode_checkpoint(state))
    [problem] = (await asyncart.audit("demo", store=store)).problems
    assert f"checkpoint at head {state.head} disagrees" in problem.message
    assert "(versions, aliases differ)" in problem.message


@pytest.mark.parametrize("edit", ["hash", "head"])
async def test_a_checkpoint_of_another_history_is_named(store, files, edit):
    data = await _checkpointed(store, files)
    state = decode_checkpoint(data, STREAM)
    if edit == "hash":
        state.last_hash = "0" * 64
    else:
        state.head = 500
    await LocalStore(store).log.put_checkpoint(STREAM, encode_checkpoint(state))
    [problem] = (await asyncart.audit("demo", store=store)).problems
    assert "is not of this stream's history" in problem.message
    assert "only costs a longer read" in problem.message
    assert (await asyncart.Api("demo", store=store).artifact("ds:a3")).version == "v0"


# -- notes --------------------------------------------------------------------------------


async def _copy_with_blobs(source: str, target: str, notes: dict[str, bytes] | None = None) -> None:
    await _copy(source, target, notes)
    blobs = Path(source) / "blobs", Path(target) / "blobs"
    await anyio.to_thread.run_sync(lambda: shutil.copytree(*blobs, dirs_exist_ok=True))


async def test_audit_names_a_note_that_disagrees_with_its_records(store, tmp_path):
    await _three_collections(store, tmp_path)
    async with asyncart.init(project="demo", id="r1", store=store) as run:
        await run.use_artifact("c0:v0")
    async with asyncart.init(project="demo", id="r2", store=store):
        pass
    notes = await LocalStore(store).log.notes("demo/")
    assert (await asyncart.audit("demo", store=store)).ok  # notes as appends wrote them
    before = str(tmp_path / "before-notes")
    await _copy_with_blobs(store, before)
    assert (await asyncart.audit("demo", store=before)).ok  # no notes at all is fine
    notes["demo/artifacts/c0"] = notes["demo/artifacts/c1"]  # versions differ, and the name
    notes["demo/artifacts/c2"] = b"garbage"
    notes["demo/runs/r2"] = notes["demo/runs/r1"]  # r2 used nothing
    damaged = str(tmp_path / "damaged")
    await _copy_with_blobs(store, damaged, notes)
    problems = {p.stream: p.message for p in (await asyncart.audit("demo", store=damaged)).problems}
    assert set(problems) == {"demo/artifacts/c0", "demo/artifacts/c2", "demo/runs/r2"}
    assert "(name, versions, updated, aliases differ)" in problems["demo/artifacts/c0"]
    assert "its note does not decode" in problems["demo/artifacts/c2"]
    assert "(used differ)" in problems["demo/runs/r2"]


# -- progress -------------------------------------------------------------------------------


async def test_progress_counts_streams_records_and_blobs(store, tmp_path):
    await _three_collections(store, tmp_path)
    seen: list[asyncart.AuditProgress] = []
    report = await asyncart.audit("demo", store=store, stream_progress=seen.append)
    last = seen[-1]
    assert (last.streams_done, last.streams_total) == (3, 3)
    assert (last.records, last.versions, last.blobs) == (
        report.records,
        report.versions,
        report.blobs,
    )
    assert [p.streams_done for p in seen] == sorted(p.streams_done for p in seen)
    assert [p.records for p in seen] == sorted(p.records for p in seen)
    assert last.problems == 0
    v0 = await asyncart.Api("demo", store=store).artifact("c0:v0")
    digest = v0.manifest.entries["f1.txt"].digest
    await anyio.Path(store, "blobs", digest[:2], digest).unlink()
    seen.clear()
    report = await asyncart.audit("demo", store=store, stream_progress=seen.append)
    assert seen[-1].problems == len(report.problems) == 1


def test_the_cli_shows_audit_progress_when_asked(tmp_path):
    asyncart_cli = shutil.which("asyncart", path=str(Path(sys.executable).parent))
    assert asyncart_cli
    store = str(tmp_path / "store")
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("alpha\n")
    env = {**os.environ, asyncart.STORE_ENV: store}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [asyncart_cli, *args], capture_output=True, text=True, env=env, timeout=60
        )

    assert run("put", str(data), "ds", "-t", "dataset", "-q").returncode == 0
    quiet = run("audit")
    assert quiet.returncode == 0 and quiet.stderr == ""
    shown = run("audit", "--progress", "--read-data")
    assert shown.returncode == 0
    assert "auditing: 1/1 streams, 5 records, 1 versions, 1 blobs (1/1 read" in shown.stderr
    assert shown.stdout.startswith("audited 1 streams, 5 records, 1 versions, 1 blobs (1 read)")


# -- over a server --------------------------------------------------------------------------


@pytest.fixture
def served(server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    monkeypatch.setenv(TOKEN_ENV, server.token("*", write=True))
    return server


async def test_audit_over_a_server_reads_in_ranges(served, tmp_path, monkeypatch):
    await _three_collections(served.url, tmp_path)
    local = await asyncart.audit("demo", store=LocalStore(served.root))
    monkeypatch.setattr(asyncart._audit, "READ_CHUNK", 4)
    monkeypatch.setattr(asyncart._audit, "BLOB_BATCH", 5)
    remote = await asyncart.audit("demo", store=served.url, read_data=True)
    assert remote.ok and local.ok, str(remote)
    assert (remote.records, remote.versions, remote.blobs, remote.blobs_read) == (
        local.records,
        local.versions,
        local.blobs,
        local.blobs,
    )
