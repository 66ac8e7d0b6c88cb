"""Audit: replaying the log from scratch finds every kind of tampering and loss, precisely."""

from __future__ import annotations

from pathlib import Path

import pytest

import asyncart
from asyncart._backends._framing import frames, scan
from asyncart._repository import SNAPSHOT_EVERY


async def _history(store: str, files: Path) -> asyncart.Artifact:
    """v0 (4 files) and v1 (one file removed), logged by a run."""
    async with asyncart.init(project="demo", store=store) as run:
        artifact = asyncart.Artifact("ds", "dataset")
        await artifact.add_dir(files)
        v0 = await run.log_artifact(artifact)
        draft = v0.new_draft()
        draft.remove("b.txt")
        return await run.log_artifact(draft)


def _log(store: str) -> Path:
    return Path(store) / "log" / "demo" / "artifacts" / "ds.log"


def _rewrite(path: Path, edit) -> None:
    """Re-frame every record after ``edit(seq, payload)``: a tamperer who fixes the checksums."""
    found = scan(path.read_bytes(), 0, 0, "x")
    payloads = [edit(seq, p) for seq, p in enumerate(found.payloads)]
    path.write_bytes(b"".join(f for p in payloads for f in frames([p])))


async def test_a_healthy_store_passes(store, files):
    await _history(store, files)
    report = await asyncart.audit("demo", store=store)
    assert report.ok, str(report)
    assert (report.streams, report.versions) == (2, 2)
    assert "OK" in str(report)


async def test_one_changed_byte_is_reported_with_stream_and_seq(store, files):
    await _history(store, files)
    path = _log(store)
    data = bytearray(path.read_bytes())
    at = data.index(b"b.txt")  # a path inside the first append's files.added record
    data[at] = ord("c")
    path.write_bytes(bytes(data))
    report = await asyncart.audit("demo", store=store)
    assert not report.ok
    [problem] = report.problems
    assert problem.stream == "demo/artifacts/ds"
    assert "seq 2" in str(problem) and "checksum mismatch" in str(problem)
    with pytest.raises(asyncart.IntegrityError):
        await asyncart.Api("demo", store=store).artifact("ds")


async def test_an_edit_with_fixed_checksums_breaks_the_hash_chain(store, files):
    await _history(store, files)
    _rewrite(_log(store), lambda seq, p: p.replace(b"b.txt", b"c.txt") if seq == 2 else p)
    report = await asyncart.audit("demo", store=store)
    messages = [str(p) for p in report.problems]
    assert messages[0].startswith("demo/artifacts/ds seq 2: record was altered"), messages
    with pytest.raises(asyncart.IntegrityError, match="hash chain"):
        await asyncart.Api("demo", store=store).artifact("ds")


async def test_a_forged_last_record_is_caught_by_replay(store, files):
    """The chain cannot protect the newest record; replaying the events still can."""
    v1 = await _history(store, files)
    forged = "f" * 64
    last = len(scan(_log(store).read_bytes(), 0, 0, "x").payloads) - 1
    _rewrite(
        _log(store),
        lambda seq, p: p.replace(v1.digest.encode(), forged.encode()) if seq == last else p,
    )
    report = await asyncart.audit("demo", store=store)
    [problem] = report.problems
    assert problem.seq == last
    assert f"v1: replay gives digest {v1.digest[:16]}" in problem.message
    assert "ffffffffffffffff" in problem.message


async def test_missing_blob_is_reported_with_the_file_that_needs_it(store, files):
    v1 = await _history(store, files)
    digest = v1.manifest.entries["a.txt"].digest
    (Path(store) / "blobs" / digest[:2] / digest).unlink()
    report = await asyncart.audit("demo", store=store)
    [problem] = report.problems
    assert f"blob {digest} of ds:v0/a.txt is missing" in problem.message


async def test_lost_snapshot_is_reported_but_reads_fall_back_to_replay(store, files, tmp_path):
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_dir(files)
    version = await artifact.save(project="demo", store=store)
    for i in range(SNAPSHOT_EVERY):
        draft = version.new_draft()
        (tmp_path / "n.txt").write_text(str(i))
        await draft.add_file(tmp_path / "n.txt", overwrite=True)
        version = await draft.save()
    snapshots = [v for v in version._saved.state.versions if v.commit.snapshot]  # type: ignore[union-attr]
    assert [v.number for v in snapshots] == [SNAPSHOT_EVERY]
    snapshot = snapshots[0].commit.snapshot
    assert snapshot is not None
    (Path(store) / "blobs" / snapshot[:2] / snapshot).unlink()

    report = await asyncart.audit("demo", store=store)
    assert [f"v{SNAPSHOT_EVERY} snapshot" in p.message for p in report.problems] == [True]
    fresh = await asyncart.Api("demo", store=store).artifact(f"ds:v{SNAPSHOT_EVERY}")
    assert fresh.digest == version.digest
    assert (fresh.manifest.entries["n.txt"].size, len(fresh.manifest)) == (2, 7)
