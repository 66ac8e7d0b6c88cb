"""The compact manifest: pages and overlays behave exactly like the plain dict they replace."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import asyncart
from asyncart._diff import ManifestDiff, diff_manifests
from asyncart._domain import manifest as manifest_module
from asyncart._domain.events import Change, Entry, FilesAdded, FilesRemoved, encode_entries
from asyncart._domain.fold import replay
from asyncart._domain.manifest import Manifest, Overlay, manifest_digest

segment = st.sampled_from(["a", "b", "ab", "a.b", "z", "é", "0"])
paths = st.lists(segment, min_size=1, max_size=3).map("/".join)
# mostly real digests; a few odd strings, which the digest and the snapshot must keep as written
digests = st.one_of(
    st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    st.sampled_from(["", "nope", "AB" * 32, "0" * 63]),
)
entries = st.builds(Entry, paths, digests, st.integers(0, 2**63 - 1))
adds = st.builds(FilesAdded, st.just("d"), st.lists(entries, max_size=8))
removes = st.builds(
    FilesRemoved, st.just("d"), st.lists(st.one_of(paths, paths.map(lambda p: p + "/")), max_size=3)
)
changes = st.lists(st.one_of(adds, adds, removes), max_size=14)


@contextmanager
def small_pages(target: int = 4) -> Iterator[None]:
    """Pages of a few entries, so that small examples span many pages."""
    saved = manifest_module._CUT_MASK, manifest_module.PAGE_MAX, manifest_module._DECODE_ROWS
    manifest_module._CUT_MASK, manifest_module.PAGE_MAX = target - 1, 2 * target
    manifest_module._DECODE_ROWS = target  # (a bulk of entries is laid out every few)
    try:
        yield
    finally:
        manifest_module._CUT_MASK, manifest_module.PAGE_MAX, manifest_module._DECODE_ROWS = saved


def reference(base: dict[str, Entry], applied: list[Change]) -> dict[str, Entry]:
    """What the changes make of ``base``, on a plain dict (the semantics before pages)."""
    out = dict(base)
    for change in applied:
        if isinstance(change, FilesAdded):
            out.update((e.path, e) for e in change.entries)
            continue
        for path in change.paths:
            if not path.endswith("/") and path in out:
                del out[path]
                continue
            prefix = path if path.endswith("/") else path + "/"
            for key in [k for k in out if k.startswith(prefix)]:
                del out[key]
    return out


def check_same(manifest: Manifest, expected: dict[str, Entry]) -> None:
    assert dict(manifest.entries.items()) == expected
    assert list(manifest.entries) == sorted(expected)
    assert len(manifest) == len(expected)
    assert manifest.size == sum(e.size for e in expected.values())
    assert manifest.digest == manifest_digest(expected.values())
    snapshot = encode_entries(sorted(expected.values(), key=lambda e: e.path))
    assert manifest.to_snapshot() == snapshot  # byte for byte the old encoding
    again = Manifest.from_snapshot(snapshot)
    assert again.entries == manifest.entries and again.digest == manifest.digest
    for path, entry in expected.items():
        assert manifest.entries[path] == entry and path in manifest.entries


@settings(max_examples=300, deadline=None)
@given(changes, changes, st.sampled_from([2, 4, 512]))
def test_replay_over_a_base_equals_a_dict(first, then, target):
    with small_pages(target):
        base = replay(None, first)
        expected_base = reference({}, first)
        check_same(base, expected_base)
        result = replay(base, then)
        check_same(result, reference(expected_base, then))
        check_same(base, expected_base)  # the base is unchanged


def test_a_replayed_root_is_laid_out_as_its_records_come():
    """A root's sorted records go to pages one by one: the replay never holds every decoded
    entry at once (a million-file open would, and each garbage collection would visit them)."""
    files, per_record = 100_000, 1_000

    def record(k: int) -> FilesAdded:
        numbers = range(k * per_record, (k + 1) * per_record)
        return FilesAdded("d", [Entry(f"f/{i:07d}", f"{i:064x}", i) for i in numbers])

    def changes() -> Iterator[Change]:  # decoded one at a time, as the log's records are
        return (record(k) for k in range(files // per_record))

    tracemalloc.start()
    try:
        held = [e for change in changes() for e in change.entries]  # what holding them costs
        all_entries = tracemalloc.get_traced_memory()[0]
        del held
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        manifest = replay(None, changes())
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert len(manifest) == files and manifest.entries["f/0012345"].size == 12345
    assert peak < all_entries * 3 / 4, (peak, all_entries)  # (before: 1.4x)


def test_a_root_out_of_order_or_with_a_path_again_is_sorted_once():
    first = FilesAdded("d", [Entry(f"b/{i:03d}", "1" * 64, i) for i in range(10)])
    earlier = FilesAdded("d", [Entry(f"a/{i:03d}", "2" * 64, i) for i in range(10)])
    again = FilesAdded("d", [Entry("b/005", "3" * 64, 99)])
    with small_pages(2):
        for applied in ([first, earlier], [first, again], [first, earlier, again]):
            check_same(replay(None, applied), reference({}, applied))


@settings(max_examples=200, deadline=None)
@given(changes, changes, st.booleans())
def test_diff_equals_a_set_based_reference(first, then, rebuilt):
    with small_pages():
        old = replay(None, first)
        new = replay(old, then)
        if rebuilt:  # the same content with pages cut anew, not shared with ``old``
            new = Manifest({e.path: e for e in reference(reference({}, first), then).values()})
        a, b = dict(old.entries.items()), dict(new.entries.items())
        expected = ManifestDiff(
            tuple(sorted(b.keys() - a.keys())),
            tuple(sorted(a.keys() - b.keys())),
            tuple(sorted(p for p in a.keys() & b.keys() if a[p].digest != b[p].digest)),
        )
        assert diff_manifests(old, new) == expected


def test_a_small_replay_shares_the_pages_it_does_not_touch():
    base = Manifest({f"d/{i:06d}": Entry(f"d/{i:06d}", f"{i:064x}", i) for i in range(20_000)})
    result = replay(base, [FilesAdded("d", [Entry("d/000100", "f" * 64, 1)])])
    shared = {id(page) for page in base._pages} & {id(page) for page in result._pages}
    assert len(base._pages) > 10 and len(shared) >= len(base._pages) - 1
    assert diff_manifests(base, result) == ManifestDiff((), (), ("d/000100",))


def test_overlay_over_a_base_never_copies_it():
    base = Manifest({p: Entry(p, "0" * 64, 1) for p in ["d/a", "d/b", "dd/c", "e"]})
    files = Overlay(base)
    files["x/y"] = Entry("x/y", "1" * 64, 2)
    files["e"] = Entry("e", "2" * 64, 3)  # replaced
    del files["d/a"]
    assert (files.added.keys(), files.removed) == ({"x/y", "e"}, {"d/a"})
    assert sorted(files) == ["d/b", "dd/c", "e", "x/y"] and len(files) == 4
    assert files.matching("d") == ["d/b"] and files.matching("e") == ["e"]
    assert files.is_dir("x") and files.is_dir("d") and not files.is_dir("e")
    del files["d/b"]
    assert not files.is_dir("d") and files.is_dir("dd")
    del files["x/y"]
    assert not files.is_dir("x")
    with pytest.raises(KeyError):
        del files["d/a"]
    assert sorted(files.manifest().entries) == ["dd/c", "e"]
    assert dict(base.entries.items())["d/a"].digest == "0" * 64  # the base is unchanged


def test_a_forged_size_or_unsorted_snapshot_still_reads():
    entries = [Entry("b", "0" * 64, 2**63 + 5), Entry("a", "1" * 64, -1)]
    manifest = Manifest.from_snapshot(encode_entries(entries))  # unsorted, as no writer does
    assert [e.size for e in manifest.entries.values()] == [-1, 2**63 + 5]
    assert manifest.digest == manifest_digest(entries)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "data"
    for name in ["a.txt", "b.txt", "sub/c.txt", "sub/d.txt"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"content of {name}")
    (tmp_path / "new.txt").write_text("new")
    (tmp_path / "other.txt").write_text("other content")
    return tmp_path


async def test_new_draft_is_an_overlay_of_its_parent(store, tree):
    draft = asyncart.Artifact("ds", "dataset")
    await draft.add_dir(tree / "data")
    v0 = await draft.save(store=store)
    child = v0.new_draft()
    await child.add_file(tree / "new.txt", "sub/new.txt")
    await child.add_file(tree / "other.txt", "a.txt", overwrite=True)
    child.remove("sub/c.txt")
    with pytest.raises(asyncart.InvalidInputError, match="is a file there"):
        await child.add_file(tree / "new.txt", "b.txt/x")
    with pytest.raises(asyncart.InvalidInputError, match="already a directory"):
        await child.add_file(tree / "new.txt", "sub")
    assert len(child._entries.added) == 2 and child._entries.removed == {"sub/c.txt"}
    assert sorted(child.manifest.entries) == ["a.txt", "b.txt", "sub/d.txt", "sub/new.txt"]
    assert sorted(v0.manifest.entries) == ["a.txt", "b.txt", "sub/c.txt", "sub/d.txt"]
    v1 = await child.save()
    change = await v0.diff(v1)
    assert change == ManifestDiff(("sub/new.txt",), ("sub/c.txt",), ("a.txt",))
    assert v1.manifest.entries["b.txt"] == v0.manifest.entries["b.txt"]
    child = v1.new_draft()
    child.remove("sub")  # everything under sub/, from the parent's sorted manifest
    assert sorted(child.manifest.entries) == ["a.txt", "b.txt"]
    await child.add_file(tree / "new.txt", "sub")  # no longer a directory
    assert sorted((await child.save()).manifest.entries) == ["a.txt", "b.txt", "sub"]


def synthetic(count: int, salt: str) -> asyncart.Artifact:
    """A draft over a synthetic manifest of ``count`` entries (no files needed to diff it)."""
    artifact = asyncart.Artifact("big", "dataset")
    made = {
        f"d{i % 97}/f{i:07d}": Entry(f"d{i % 97}/f{i:07d}", f"{salt}{i:063x}", 1)
        for i in range(count)
    }
    artifact._entries = Overlay(Manifest(made))
    return artifact


async def test_diff_runs_off_the_event_loop():
    """The loop thread spends a fraction of the CPU time the diff takes (measured by running
    the same diff inline): the work is done in a worker thread while the loop waits."""
    old, new = synthetic(120_000, "a"), synthetic(120_000, "b")
    loop_cpu = time.thread_time()
    change = await old.diff(new)
    loop_cpu = time.thread_time() - loop_cpu
    inline_cpu = time.thread_time()
    assert diff_manifests(old.manifest, new.manifest) == change
    inline_cpu = time.thread_time() - inline_cpu
    assert len(change.changed) == 120_000
    assert loop_cpu < inline_cpu / 5


async def test_sources_of_added_files_are_exact(store, tmp_path):
    """A draft keeps where each added file came from as its add call's folder; names that do
    not follow the folder (add_file under another name) keep their own path."""
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "x.txt").write_text("x")
    (tmp_path / "d" / "y.txt").write_text("y")
    (tmp_path / "lone.bin").write_text("lone")
    draft = asyncart.Artifact("ds", "dataset")
    await draft.add_dir(tmp_path / "d", "in")
    await draft.add_file(tmp_path / "lone.bin", "renamed/other.txt")
    await draft.add_file(tmp_path / "lone.bin")
    sources = {path: draft._sources.local(path) for path in draft.manifest.entries}
    assert sources == {
        "in/sub/x.txt": str(tmp_path / "d" / "sub" / "x.txt"),
        "in/y.txt": str(tmp_path / "d" / "y.txt"),
        "renamed/other.txt": str(tmp_path / "lone.bin"),
        "lone.bin": str(tmp_path / "lone.bin"),
    }
    assert set(draft._sources._odd) == {"renamed/other.txt"}  # the others: a folder each
    draft.remove("in/y.txt")
    saved = await draft.save(store=store)
    root = await saved.download(tmp_path / "out")
    assert (root / "in/sub/x.txt").read_text() == "x"
    assert (root / "renamed/other.txt").read_text() == "lone"
    assert sorted(saved.manifest.entries) == ["in/sub/x.txt", "lone.bin", "renamed/other.txt"]
