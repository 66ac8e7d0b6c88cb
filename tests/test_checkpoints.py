"""Checkpoints and cost flat in history: an open reads a checkpoint and the records after it, a
lost or damaged checkpoint only costs a longer read, and a full re-log records what changed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import hypothesis.strategies as st
import msgspec
from _records import CountingStore
from hypothesis import given, settings

import asyncart
from asyncart._domain.checkpoint import (
    CHECKPOINT_EVERY,
    checkpoint_due,
    decode_checkpoint,
    encode_checkpoint,
)
from asyncart._domain.events import (
    AliasesMoved,
    CollectionCreated,
    CollectionDeleted,
    DraftDiscarded,
    DraftOpened,
    Entry,
    Event,
    FilesAdded,
    FilesRemoved,
    MetadataSet,
    Record,
    VersionCommitted,
    VersionEdited,
    decode,
    record_hash,
)
from asyncart._domain.fold import CollectionState, fold, replay
from asyncart._repository import Repository, collection_stream

STREAM = collection_stream("p", "ds")


async def _versions(root: Path, files: Path, count: int) -> list[asyncart.Artifact]:
    """``count`` versions of p/ds, each a full re-log with one file changed."""
    saved = []
    for i in range(count):
        (files / "changing.txt").write_text(f"content {i}")
        artifact = asyncart.Artifact("ds", "dataset", metadata={"i": i})
        await artifact.add_dir(files)
        saved.append(await artifact.save(project="p", store=root))
    return saved


def _checkpoint_file(root: Path) -> Path:
    return root / "log" / f"{STREAM}.ckpt"


async def _open_fresh(root: Path) -> tuple[CollectionState, int]:
    store = CountingStore(asyncart.LocalStore(root))
    state = await Repository(store).collection("p", "ds")
    return state, store.log.records_read


async def _head(root: Path) -> int:
    return len(await asyncart.LocalStore(root).log.read(STREAM))


async def test_an_open_reads_the_checkpoint_and_the_records_after_it(tmp_path, files):
    root = tmp_path / "store"
    await _versions(root, files, 40)
    head = await _head(root)
    assert head > 2 * CHECKPOINT_EVERY
    state, read = await _open_fresh(root)
    assert len(state.versions) == 40
    checkpointed = decode_checkpoint(_checkpoint_file(root).read_bytes(), STREAM).head
    assert head - checkpointed < CHECKPOINT_EVERY
    assert read == head - checkpointed + 1  # the anchor record, then the ones after it
    payloads = await asyncart.LocalStore(root).log.read(STREAM)
    full = fold(CollectionState(STREAM, last_hash=record_hash(payloads[-1])), _records(payloads))
    assert _comparable(state) == _comparable(full)


async def test_a_damaged_lost_or_foreign_checkpoint_costs_only_a_longer_read(tmp_path, files):
    root = tmp_path / "store"
    saved = await _versions(root, files, 40)
    head = await _head(root)
    good, _ = await _open_fresh(root)
    path = _checkpoint_file(root)
    data = path.read_bytes()
    other = CollectionState(STREAM, head=good.head, last_hash="0" * 64, name="ds", type="x")
    damages = {
        "bit flip": data[:100] + bytes([data[100] ^ 1]) + data[101:],
        "cut short": data[: len(data) // 2],
        "empty": b"",
        "of another history": encode_checkpoint(other),
        "of another stream": encode_checkpoint(CollectionState("p/artifacts/x", head=3)),
    }
    for why, damaged in damages.items():
        path.write_bytes(damaged)
        state, read = await _open_fresh(root)
        assert read in (head, head + 1), why  # from seq 0 (after the anchor, if it decoded)
        assert _comparable(state) == _comparable(good), why
        assert path.read_bytes() != damaged, why  # the read that passed a boundary rewrote it
        artifact = await asyncart.Api("p", store=root).artifact("ds:latest")
        assert artifact.digest == saved[-1].digest
    path.unlink()
    state, read = await _open_fresh(root)
    assert read == head and _comparable(state) == _comparable(good)
    assert path.exists()


async def test_a_full_re_log_records_only_what_changed(tmp_path, files):
    root = tmp_path / "store"
    count = len([p for p in files.rglob("*") if p.is_file()]) + 1
    saved = await _versions(root, files, 30)
    records = _records(await asyncart.LocalStore(root).log.read(STREAM))
    added = [e for r in records if isinstance(r.body, FilesAdded) for e in r.body.entries]
    assert len(added) == count + 29  # the first version whole, then the changed file each time
    api = asyncart.Api("p", store=root)
    for artifact in saved[::7]:
        reread = await api.artifact(f"ds:{artifact.version}")
        assert dict(reread.manifest.entries) == dict(artifact.manifest.entries)
        assert reread.metadata == artifact.metadata
    report = await asyncart.audit(store=root, read_data=True)
    assert report.ok, report


async def test_a_re_log_that_removes_and_adds_files_replays_to_the_same_manifest(tmp_path):
    root, src = tmp_path / "store", tmp_path / "src"
    layouts = [{"a": "1", "b/c": "2"}, {"a/x": "3", "b": "4"}, {"b/c/d": "5", "e": "6"}]
    saved = []
    for layout in layouts:
        artifact = asyncart.Artifact("ds", "dataset")
        for name, text in layout.items():
            path = src / str(len(saved)) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            await artifact.add_file(path, name=name)
        saved.append(await artifact.save(project="p", store=root))
    for artifact, layout in zip(saved, layouts, strict=True):
        reread = await asyncart.Api("p", store=root).artifact(f"ds:{artifact.version}")
        assert sorted(reread.manifest.entries) == sorted(layout)
    assert (await asyncart.audit(store=root)).ok


# -- replay equality with and without checkpoints (property) ---------------------------------


def _digest(n: int) -> str:
    return f"{n:064x}"


@st.composite
def histories(draw) -> list[Event]:
    """A valid collection history: drafts (single and distributed), removals, metadata and
    tags, commits over parents, discards, alias moves, edits and deletions of the whole
    collection."""
    bodies: list[Event] = [CollectionCreated("ds", "dataset")]
    manifests: list[dict[str, Entry]] = []
    drafts: dict[str, tuple[int | None, list]] = {}
    dead = 0  # versions below this number were deleted with the collection
    actions = ["open", "add", "remove", "meta", "commit", "alias", "edit", "drop"]
    for step in range(draw(st.integers(1, 30))):
        action = draw(st.sampled_from(actions))
        if action == "drop" and len(manifests) > dead:  # not twice in a row
            bodies.append(CollectionDeleted())
            drafts.clear()
            dead = len(manifests)
            continue
        if action == "open" or not drafts:
            live = len(manifests) > dead
            parent = draw(st.none() | st.integers(dead, len(manifests) - 1)) if live else None
            draft = f"d{step}"
            distributed = draw(st.none() | st.just(f"g{step}"))
            bodies.append(DraftOpened(draft, parent, distributed))
            drafts[draft] = (parent, [])
            continue
        draft = draw(st.sampled_from(sorted(drafts)))
        parent, changes = drafts[draft]
        if action == "add":
            names = draw(st.lists(st.sampled_from(["a", "b", "c/d", "c/e", "f/g/h"]), max_size=3))
            entries = [Entry(n, _digest(draw(st.integers(0, 5))), 1) for n in names]
            change: Event = FilesAdded(draft, entries)
        elif action == "remove":
            change = FilesRemoved(draft, draw(st.lists(st.sampled_from(["a", "c/", "f"]))))
        elif action == "meta":
            value = draw(st.integers(-(2**63), 2**63 - 1))
            tags = draw(st.none() | st.lists(st.sampled_from(["t1", "t2"]), max_size=2))
            bodies.append(MetadataSet(draft, {"k": value}, "described", tags))
            continue
        elif action == "edit" and len(manifests) > dead:
            number = draw(st.integers(dead, len(manifests) - 1))
            tags = draw(st.lists(st.sampled_from(["t1", "t2", "t3"]), max_size=2))
            bodies.append(VersionEdited(number, draw(st.none() | st.just({})), "edited", tags))
            continue
        elif action == "alias" and len(manifests) > dead:
            number = draw(st.integers(dead, len(manifests) - 1))
            bodies.append(AliasesMoved(number, add=[draw(st.sampled_from(["best", "prod"]))]))
            continue
        else:
            base = None if parent is None else _manifest(manifests[parent])
            manifest = replay(base, changes)
            del drafts[draft]
            if draw(st.booleans()) or not manifests:
                number = len(manifests)
                manifests.append(dict(manifest.entries))
                aliases = draw(st.lists(st.sampled_from(["best", "prod"]), max_size=1))
                bodies.append(
                    VersionCommitted(
                        draft, number, manifest.digest, len(manifest), manifest.size, None, aliases
                    )
                )
            else:
                bodies.append(DraftDiscarded(draft, len(manifests) - 1))
            continue
        changes.append(change)
        bodies.append(change)
    return bodies


def _manifest(entries: dict[str, Entry]):
    from asyncart._domain.manifest import Manifest

    return Manifest(entries)


def _as_records(bodies: Sequence[Event]) -> list[Record]:
    return [
        Record(STREAM, seq, float(seq), "user:t", f"{seq:064x}", b) for seq, b in enumerate(bodies)
    ]


def _records(payloads: list[bytes]) -> list[Record]:
    return [decode(p, STREAM, seq) for seq, p in enumerate(payloads)]


def _comparable(state: CollectionState) -> bytes:
    return msgspec.msgpack.encode(state, order="deterministic")  # sets in a stable order


@settings(max_examples=150, deadline=None)
@given(histories(), st.data())
def test_folding_from_any_checkpoint_gives_the_state_folded_from_seq_0(bodies, data):
    records = _as_records(bodies)
    whole = fold(CollectionState(STREAM), records)
    at = data.draw(st.integers(1, len(records)))
    partial = fold(CollectionState(STREAM), records[:at])
    partial.last_hash = records[at - 1].prev  # any value: it must survive the round trip
    restored = decode_checkpoint(encode_checkpoint(partial), STREAM)
    assert restored == partial
    restored.last_hash = whole.last_hash
    assert _comparable(fold(restored, records[at:])) == _comparable(whole)
    by_seq = {r.seq: r.body for r in records}
    for version in whole.versions:  # each version replays from its change seqs to its digest
        chain, manifest = [], None
        number: int | None = version.number
        while number is not None:
            chain.append(whole.versions[number])
            number = whole.versions[number].parent
        for v in reversed(chain):
            manifest = replay(manifest, [by_seq[s] for s in v.draft.change_seqs])
        assert manifest is not None and manifest.digest == version.commit.digest


def test_a_checkpoint_is_due_whenever_the_head_passes_a_multiple():
    assert checkpoint_due(0, CHECKPOINT_EVERY)
    assert checkpoint_due(CHECKPOINT_EVERY - 1, CHECKPOINT_EVERY + 1)
    assert not checkpoint_due(1, CHECKPOINT_EVERY - 1)
    assert checkpoint_due(5, 5 + CHECKPOINT_EVERY)  # any run as long as the period


async def test_concurrent_commits_on_one_repository_never_break_the_stream(tmp_path):
    """Two saves racing on one store object (one heavy enough to encode in a thread): each
    lands as its own version or retries; the stream replays from seq 0."""
    root, big, small = tmp_path / "store", tmp_path / "big", tmp_path / "small"
    big.mkdir()
    small.mkdir()
    for i in range(2_500):
        (big / f"{i}.txt").write_text(str(i))
    store = asyncart.LocalStore(root)
    for round_ in range(3):
        (small / "x.txt").write_text(f"round {round_}")
        heavy, light = asyncart.Artifact("ds", "dataset"), asyncart.Artifact("ds", "dataset")
        (big / "changing.txt").write_text(f"round {round_}")
        await heavy.add_dir(big)
        await light.add_dir(small)
        async with asyncart.init(project="p", store=store) as run:
            await asyncio.gather(run.log_artifact(heavy), run.log_artifact(light))
    payloads = await asyncart.LocalStore(root).log.read(STREAM)
    state = fold(CollectionState(STREAM), _records(payloads))
    assert len(state.versions) == 6
    assert (await asyncart.audit(store=root)).ok


async def test_a_checkpoint_claiming_a_version_the_log_lacks_is_set_aside(tmp_path, files):
    root = tmp_path / "store"
    await _versions(root, files, 20)
    good, _ = await _open_fresh(root)
    forged = decode_checkpoint(_checkpoint_file(root).read_bytes(), STREAM)
    extra = forged.versions[-1]
    forged.versions.append(
        type(extra)(extra.number + 1, extra.draft, extra.commit, "user:x", 0.0, extra.seq)
    )
    _checkpoint_file(root).write_bytes(encode_checkpoint(forged))
    state, read = await _open_fresh(root)
    assert _comparable(state) == _comparable(good)
    assert read >= await _head(root)  # from seq 0


async def test_a_long_lived_writer_leaves_checkpoints_behind(tmp_path, files):
    root = tmp_path / "store"
    async with asyncart.init(project="p", store=root) as run:  # one repository for all
        for i in range(40):
            (files / "changing.txt").write_text(f"content {i}")
            artifact = asyncart.Artifact("ds", "dataset")
            await artifact.add_dir(files)
            await run.log_artifact(artifact)
    checkpointed = decode_checkpoint(_checkpoint_file(root).read_bytes(), STREAM).head
    assert await _head(root) - checkpointed < CHECKPOINT_EVERY
