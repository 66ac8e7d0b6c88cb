"""``asyncart copy``: a store (or one project) copied record for record into another, blobs
once, resumable, and refused where the result could not be the same history."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from _records import StoreWith

import asyncart
from asyncart import ConflictError, InvalidInputError, LocalStore
from asyncart._cli import main as cli_main
from asyncart._domain.events import FilesAdded, VersionCommitted, decode
from asyncart._gc import collect


async def _history(store: str, files: Path) -> None:
    """Two projects: a dataset with three versions (one incremental), a run that used it."""
    async with asyncart.init(project="demo", store=store) as run:
        art = asyncart.Artifact("ds", "dataset")
        await art.add_dir(files)
        v0 = await run.log_artifact(art, aliases=["best"])
    draft = v0.new_draft()
    draft.remove("a.txt")
    await draft.save()
    again = asyncart.Artifact("ds", "dataset")
    await again.add_dir(files / "images")
    await again.save(project="demo", store=store)
    async with asyncart.init(project="demo", store=store) as run:
        await run.use_artifact("ds:best")
    other = asyncart.Artifact("model", "model")
    await other.add_file(files / "b.txt")
    await other.save(project="other", store=store)


async def _everything(store: str) -> dict[str, list[bytes]]:
    log = LocalStore(store).log
    return {s: await log.read(s) for s in await log.streams("")}


async def test_a_copy_has_the_same_records_and_passes_audit(tmp_path: Path, files: Path) -> None:
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    await _history(src, files)
    report = await asyncart.copy_store(src, dst)
    assert await _everything(dst) == await _everything(src)
    records = sum(len(r) for r in (await _everything(src)).values())
    assert (report.streams, report.records) == (len(await _everything(src)), records)
    assert report.blobs == 6  # the six files, each once (no version is large enough for a snapshot)
    audited = await asyncart.audit(store=dst, read_data=True)
    assert audited.ok, audited.problems
    api = asyncart.Api("demo", store=dst)
    latest = await api.artifact("ds:latest")
    assert latest.digest == (await asyncart.Api("demo", store=src).artifact("ds:latest")).digest
    assert (await api.artifact("ds:best")).version == "v0"
    assert [c.name for c in await asyncart.Api("demo", store=dst).artifact_collections()] == ["ds"]


async def test_a_second_copy_copies_nothing_and_a_later_one_only_what_is_new(
    tmp_path: Path, files: Path
) -> None:
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    await _history(src, files)
    await asyncart.copy_store(src, dst)
    again = await asyncart.copy_store(src, dst)
    assert (again.records, again.blobs) == (0, 0)
    newer = asyncart.Artifact("ds", "dataset")
    (tmp_path / "new.txt").write_text("new")
    await newer.add_file(tmp_path / "new.txt")
    await newer.save(project="demo", store=src)
    later = await asyncart.copy_store(src, dst)
    assert later.blobs == 1 and later.records > 0
    assert await _everything(dst) == await _everything(src)


async def test_an_interrupted_copy_resumes(tmp_path: Path, files: Path) -> None:
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    await _history(src, files)

    class Stop(Exception):
        pass

    seen: list[asyncart.CopyProgress] = []

    def stop_after_two_streams(p: asyncart.CopyProgress) -> None:
        seen.append(p)
        if p.streams_done == 2:
            raise Stop

    with pytest.raises(Stop):
        await asyncart.copy_store(src, dst, progress=stop_after_two_streams)
    resumed = await asyncart.copy_store(src, dst)
    assert resumed.streams == len(await _everything(src))
    assert 0 < resumed.records < sum(len(r) for r in (await _everything(src)).values())
    assert await _everything(dst) == await _everything(src)
    assert (await asyncart.audit(store=dst)).ok


async def test_one_project(tmp_path: Path, files: Path) -> None:
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    await _history(src, files)
    report = await asyncart.copy_store(src, dst, project="other")
    assert report.streams == 1
    assert list(await _everything(dst)) == ["other/artifacts/model"]


async def test_another_history_in_the_destination_is_refused(tmp_path: Path, files: Path) -> None:
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    await _history(src, files)
    theirs = asyncart.Artifact("ds", "dataset")
    await theirs.add_file(files / "b.txt")
    await theirs.save(project="demo", store=dst)
    before = await _everything(dst)
    with pytest.raises(ConflictError, match="demo/artifacts/ds"):
        await asyncart.copy_store(src, dst, project="demo")
    assert (await _everything(dst))["demo/artifacts/ds"] == before["demo/artifacts/ds"]


async def test_a_server_destination_and_the_same_store_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="restamps"):
        await asyncart.copy_store(str(tmp_path), "http://127.0.0.1:1")
    with pytest.raises(InvalidInputError, match="same store"):
        await asyncart.copy_store(str(tmp_path / "s"), str(tmp_path / "s"))


async def test_blobs_are_durable_before_the_records_that_use_them(
    tmp_path: Path, files: Path
) -> None:
    """Every append to the destination comes after a flush of its blobs, and when it is made
    the destination holds every blob its records refer to (files and snapshots)."""
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    await _history(src, files)
    for n in range(40):  # past a snapshot (every 32 versions)
        (tmp_path / "n").write_text(str(n))
        more = asyncart.Artifact("chain", "dataset")
        await more.add_file(tmp_path / "n")
        await more.save(project="demo", store=src)
    events: list[str] = []
    local = LocalStore(dst)
    await local.create()

    async def check(stream: str, payloads: Sequence[bytes], expected_seq: int) -> None:
        sizes, snapshots = _referenced(stream, payloads, expected_seq)
        assert not await local.blobs.missing(sizes), stream
        for snapshot in snapshots:
            await local.blobs.get_bytes(snapshot)  # raises unless it is there
        events.append("append")

    log = _Told(local.log, events, before_append=check)
    store = StoreWith(local, log=log, blobs=_Told(local.blobs, events))
    await asyncart.copy_store(src, store)  # type: ignore[arg-type]
    assert events and events[0] == "flush"
    assert all(events[i - 1] == "flush" for i, e in enumerate(events) if e == "append")
    assert any(_referenced(s, r, 0)[1] for s, r in (await _everything(src)).items())


def _referenced(
    stream: str, payloads: Sequence[bytes], seq: int
) -> tuple[dict[str, int], list[str]]:
    """The file blobs (digest -> size) and snapshot blobs that ``payloads`` refer to."""
    sizes: dict[str, int] = {}
    snapshots: list[str] = []
    for n, payload in enumerate(payloads, seq):
        body = decode(payload, stream, n).body
        if isinstance(body, FilesAdded):
            sizes.update((e.digest, e.size) for e in body.entries)
        elif isinstance(body, VersionCommitted) and body.snapshot:
            snapshots.append(body.snapshot)
    return sizes, snapshots


class _Told:
    """Delegates to ``inner``, noting each flush in ``events`` and calling ``before_append``
    (else noting it) before each append."""

    def __init__(self, inner: object, events: list[str], before_append: Any = None) -> None:
        self.inner, self.events, self.before_append = inner, events, before_append

    def __getattr__(self, name: str) -> object:
        attr = getattr(self.inner, name)
        if name not in ("append", "flush"):
            return attr

        async def told(*args: Any, **kwargs: Any) -> object:
            if name == "append" and self.before_append is not None:
                await self.before_append(*args[:3])
            else:
                self.events.append(name)
            return await attr(*args, **kwargs)

        return told


@pytest.mark.allow_blocking
def test_cli_copy_json(tmp_path: Path, files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import anyio

    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    anyio.run(_history, src, files)
    assert cli_main(["--json", "copy", src, dst]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["streams"] == 4 and data["blobs"] == 6
    assert cli_main(["audit", "--store", dst]) == 0


class _SweptAfterCheck(StoreWith):
    """A destination swept by a garbage collection right after the copy's first blob check."""

    def __init__(self, store: LocalStore) -> None:
        super().__init__(store, blobs=self)
        self.checks = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner.blobs, name)

    async def epoch(self) -> int:
        return await self.inner.epoch()

    async def missing(self, sizes: dict[str, int]) -> set[str]:
        found = await self.inner.blobs.missing(sizes)
        self.checks += 1
        if self.checks == 1:
            assert (await collect(self.inner, grace=0)).blobs_removed == 1
        return found


async def test_a_copy_carries_the_destinations_epoch(tmp_path: Path) -> None:
    """A blob the destination held unreferenced (so the copy skipped it) and a collection then
    swept: the append is refused, the copy checks again and sends it, and nothing is lost."""
    src, dst = str(tmp_path / "src"), LocalStore(tmp_path / "dst")
    (tmp_path / "f.txt").write_bytes(b"held by dst, referenced by nothing there")
    art = asyncart.Artifact("ds", "dataset")
    await art.add_file(tmp_path / "f.txt")
    await art.save(project="demo", store=src)
    await dst.create()
    await dst.blobs.put_bytes(b"held by dst, referenced by nothing there")
    swept = _SweptAfterCheck(dst)
    await asyncart.copy_store(src, swept)
    assert swept.checks == 2  # refused once, checked again
    audit = await asyncart.audit(store=str(tmp_path / "dst"), read_data=True)
    assert audit.ok, audit.problems
