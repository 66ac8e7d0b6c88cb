"""A root draft made by ``add_dir`` holds its files as manifest pages, not as Entry objects;
its commit makes upload items a slice at a time and files.added records page by page, with
the very bytes the Entry-per-file draft wrote."""

from __future__ import annotations

import gc
import os
import tracemalloc
from pathlib import Path

import blake3
import pytest

import asyncart
from asyncart import _artifact, _repository, _transfer
from asyncart._artifact import _walk
from asyncart._domain.events import (
    CollectionCreated,
    DraftOpened,
    Entry,
    FilesAdded,
    VersionCommitted,
    decode,
)
from asyncart._domain.fold import CollectionState, fold
from asyncart._domain.manifest import EntryList, Manifest
from asyncart._repository import AddedChunks, _encoded, _with_draft, chunk_entries


def tree(root: Path, count: int, per: int = 50) -> Path:
    for i in range(count):
        folder = root / f"d{i // per:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:05d}.bin").write_bytes(f"file {i}".encode())
    return root


async def test_a_bulk_add_keeps_pages_not_entries(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", 3_000)
    draft = asyncart.Artifact("ds", "dataset")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        added = await draft.add_dir(src)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    files = draft._entries
    assert isinstance(added, EntryList) and len(added) == 3_000
    assert files.added == {} and len(files.base) == 3_000  # the tree's manifest, as pages
    assert draft._sources._of == {} and draft._sources._odd == {}  # one folder for them all
    assert draft.manifest is files.base  # nothing to rebuild for the commit
    # A page holds an entry in about 100 bytes (its path and hex digest as msgpack, its size
    # in an array); an Entry per file with a dict slot and a local path was about 600.
    assert held / 3_000 < 250


async def test_entries_returned_by_add_dir_read_like_a_list(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", 12, per=5)
    added = await asyncart.Artifact("ds", "dataset").add_dir(src, name="top")
    entries = list(added)
    assert [e.path for e in entries] == sorted(e.path for e in entries)
    assert entries[0].path == "top/d000/f00000.bin"
    assert added == entries and added[3] == entries[3] and added[-1] == entries[-1]
    assert added[2:7] == entries[2:7] and added[::5] == entries[::5]
    with pytest.raises(IndexError):
        added[12]


async def test_a_bulk_draft_changes_like_any_other(tmp_path: Path) -> None:
    src = tree(tmp_path / "src", 20, per=5)
    (tmp_path / "x.txt").write_text("other")
    draft = asyncart.Artifact("ds", "dataset")
    await draft.add_dir(src)
    with pytest.raises(asyncart.InvalidInputError, match="other content"):
        await draft.add_file(tmp_path / "x.txt", "d000/f00000.bin")
    with pytest.raises(asyncart.InvalidInputError, match="already a directory"):
        await draft.add_file(tmp_path / "x.txt", "d001")
    with pytest.raises(asyncart.InvalidInputError, match="is a file there"):
        await draft.add_file(tmp_path / "x.txt", "d001/f00005.bin/y")
    await draft.add_file(tmp_path / "x.txt", "d000/f00000.bin", overwrite=True)
    draft.remove("d002/")
    await draft.add_dir(src / "d003", name="again")
    assert draft.manifest.entries["d000/f00000.bin"].size == 5
    assert "d002/f00010.bin" not in draft.manifest.entries and len(draft.manifest) == 20
    saved = await draft.save(project="p", store=tmp_path / "store")
    out = await saved.download(tmp_path / "out")
    assert (out / "d000/f00000.bin").read_text() == "other"
    assert (out / "again/f00015.bin").read_text() == "file 15"
    assert (await asyncart.audit(store=tmp_path / "store", read_data=True)).ok


def test_the_walk_gives_paths_sorted_without_sorting_them(tmp_path: Path) -> None:
    paths = ["a.b", "a/x", "a/y.z", "a-b/c", "ab", "a b", "é/1", "z", "0/0/0", "a/x.d/e"]
    for path in paths:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(path)
    found, skipped = _walk(str(tmp_path), "p/")
    pairs = list(found)
    assert pairs == [(f"p/{p}", os.path.join(tmp_path, p)) for p in sorted(paths)]
    assert not skipped and found[2:5] == pairs[2:5] and found[-1] == pairs[-1]


def entries_of(count: int) -> list[Entry]:
    digests = [blake3.blake3(b"%d" % i).hexdigest() for i in range(count)]
    made = [Entry(f"d{i % 3}/f{i:03d}", digests[i], i) for i in range(count)]
    return sorted(made, key=lambda e: e.path)


def test_records_of_a_root_are_byte_identical_to_entry_chunks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_repository, "ENTRIES_PER_EVENT", 7)
    entries = entries_of(40)
    manifest = Manifest({e.path: e for e in entries})
    head = [CollectionCreated("ds", "dataset"), DraftOpened("dr", None)]
    tail = [VersionCommitted("dr", 0, manifest.digest, len(manifest), manifest.size)]
    old = [*head, *(_with_draft(c, "dr") for c in chunk_entries(entries)), *tail]
    new = [*head, AddedChunks(manifest, "dr"), *tail]
    old_records, old_payloads, old_hash = _encoded("p/artifacts/ds", 0, "", old, "user:u", 1.5)
    new_records, new_payloads, new_hash = _encoded("p/artifacts/ds", 0, "", new, "user:u", 1.5)
    assert new_payloads == old_payloads and new_hash == old_hash and len(new_payloads) == 9
    added = [decode(p, "p/artifacts/ds", i).body for i, p in enumerate(new_payloads)][2:-1]
    assert all(isinstance(b, FilesAdded) and len(b.entries) <= 7 for b in added)
    # what is kept to fold holds no entry, and folds to the same state
    assert all(e.path == "" for r in new_records[2:-1] for e in r.body.entries)  # type: ignore[union-attr]
    folded_old = fold(CollectionState("p/artifacts/ds"), old_records)
    folded_new = fold(CollectionState("p/artifacts/ds"), new_records)
    assert folded_new.versions[0].draft == folded_old.versions[0].draft
    assert folded_new.versions[0].draft.touched == 40


async def test_a_saved_bulk_draft_logs_its_sorted_entries_in_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_repository, "ENTRIES_PER_EVENT", 4)
    src = tree(tmp_path / "src", 18, per=4)
    (tmp_path / "late.txt").write_text("late")
    draft = asyncart.Artifact("ds", "dataset")
    await draft.add_dir(src)
    await draft.add_file(tmp_path / "late.txt", "d001/late.txt")
    draft.remove("d000/f00001.bin")
    saved = await draft.save(project="p", store=tmp_path / "store")
    log = asyncart.LocalStore(tmp_path / "store").log
    payloads = await log.read("p/artifacts/ds", 0)
    bodies = [decode(p, "p/artifacts/ds", i).body for i, p in enumerate(payloads)]
    added = [b for b in bodies if isinstance(b, FilesAdded)]
    assert [len(b.entries) for b in added] == [4, 4, 4, 4, 2]
    assert [e for b in added for e in b.entries] == list(saved.manifest.entries.values())


async def test_upload_items_are_made_a_slice_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_transfer, "ASK_FILES", 7)
    made: list[int] = []
    getitem = _artifact._Uploads.__getitem__

    def counted(self, index):  # type: ignore[no-untyped-def]
        out = getitem(self, index)
        made.append(len(out) if isinstance(out, list) else 1)
        return out

    monkeypatch.setattr(_artifact._Uploads, "__getitem__", counted)
    src = tree(tmp_path / "src", 30, per=10)
    draft = asyncart.Artifact("ds", "dataset")
    await draft.add_dir(src)
    saved = await draft.save(project="p", store=tmp_path / "store")
    assert max(made) == 7 and sum(made) == 2 * 30  # asked, then sent: a slice each time
    assert len(saved.manifest) == 30
    assert (await asyncart.audit(store=tmp_path / "store", read_data=True)).ok
