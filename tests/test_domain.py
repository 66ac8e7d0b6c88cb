"""Property tests of the pure core: encoding, replay and manifest digests."""

from hypothesis import given
from hypothesis import strategies as st

from asyncart._domain.events import (
    AliasesMoved,
    CollectionCreated,
    DraftOpened,
    Entry,
    FilesAdded,
    FilesRemoved,
    MetadataSet,
    Record,
    VersionCommitted,
    VersionDeleted,
    decode,
    encode,
)
from asyncart._domain.fold import CollectionState, fold, replay
from asyncart._domain.manifest import Manifest, manifest_digest

segment = st.text(alphabet="abcdefgh0123_.", min_size=1, max_size=4).filter(
    lambda s: s not in (".", "..")
)
paths = st.lists(segment, min_size=1, max_size=3).map("/".join)
digests = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
entries = st.builds(Entry, paths, digests, st.integers(0, 2**40))
adds = st.builds(FilesAdded, st.just("d"), st.lists(entries, max_size=6))
removes = st.builds(
    FilesRemoved, st.just("d"), st.lists(st.one_of(paths, paths.map(lambda p: p + "/")), max_size=3)
)
changes = st.lists(st.one_of(adds, removes), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
bodies = st.one_of(
    st.builds(CollectionCreated, segment, segment),
    st.builds(DraftOpened, st.just("d"), st.none() | st.integers(0, 9), st.none() | segment),
    adds,
    removes,
    st.builds(
        MetadataSet, st.just("d"), st.dictionaries(st.text(max_size=5), json_values, max_size=3)
    ),
    st.builds(
        VersionCommitted,
        st.just("d"),
        st.integers(0, 99),
        digests,
        st.integers(0, 2**63),
        st.integers(0, 2**63),
    ),
    st.builds(AliasesMoved, st.integers(0, 9), st.lists(segment, max_size=2)),
)


@given(bodies, st.integers(0, 2**31), st.floats(0, 2e9), digests)
def test_records_round_trip(body, seq, time, prev):
    record = Record("demo/artifacts/x", seq, time, "run:abc", prev, body)
    assert decode(encode(record), "s", 0) == record


@given(changes, st.integers(0, 12))
def test_replaying_a_prefix_then_the_rest_equals_replaying_all(all_changes, cut):
    whole = replay(None, all_changes)
    stepwise = replay(replay(None, all_changes[:cut]), all_changes[cut:])
    assert dict(stepwise.entries) == dict(whole.entries)
    assert stepwise.digest == whole.digest


@given(st.lists(entries, max_size=8, unique_by=lambda e: e.path), st.randoms())
def test_manifest_digest_ignores_order_and_size(items, rnd):
    shuffled = list(items)
    rnd.shuffle(shuffled)
    resized = [Entry(e.path, e.digest, e.size + 1) for e in shuffled]
    assert manifest_digest(items) == manifest_digest(shuffled) == manifest_digest(resized)


def test_manifest_digest_covers_paths_and_contents():
    a = Entry("a", "0" * 64, 1)
    assert manifest_digest([a]) != manifest_digest([Entry("b", "0" * 64, 1)])
    assert manifest_digest([a]) != manifest_digest([Entry("a", "1" * 64, 1)])


def test_remove_prefix_and_exact_path():
    base = Manifest({p: Entry(p, "0" * 64, 1) for p in ["d/a", "d/b", "dd/c", "d", "e"]})
    assert sorted(replay(base, [FilesRemoved("x", ["d/"])]).entries) == ["d", "dd/c", "e"]
    assert sorted(replay(base, [FilesRemoved("x", ["d"])]).entries) == ["d/a", "d/b", "dd/c", "e"]


def _records(bodies):
    return [Record("p/artifacts/x", i, 0.0, "t", "", b) for i, b in enumerate(bodies)]


def test_fold_builds_versions_and_moves_aliases():
    e = Entry("f", "0" * 64, 3)
    state = fold(
        CollectionState("p/artifacts/x"),
        _records(
            [
                CollectionCreated("x", "dataset"),
                DraftOpened("d0"),
                FilesAdded("d0", [e]),
                VersionCommitted("d0", 0, manifest_digest([e]), 1, 3, aliases=["best"]),
                DraftOpened("d1", parent=0),
                FilesRemoved("d1", ["f"]),
                VersionCommitted("d1", 1, manifest_digest([]), 0, 0),
                AliasesMoved(1, add=["best"]),
            ]
        ),
    )
    assert [v.number for v in state.versions] == [0, 1]
    assert state.aliases == {"latest": 1, "best": 1}
    assert state.versions[0].aliases == set()
    assert state.drafts == {}


def test_records_written_before_a_field_existed_still_decode():
    """Schema evolution: fields added later have defaults, so old records decode."""
    import msgspec

    old = msgspec.msgpack.encode(
        {
            "stream": "p/artifacts/x",
            "seq": 3,
            "time": 0.0,
            "actor": "run:a",
            "prev": "",
            "body": {
                "kind": "version.committed",
                "draft": "d",
                "version": 0,
                "digest": "0" * 64,
                "file_count": 1,
                "size": 2,
            },
        }
    )
    body = decode(old, "s", 0).body
    assert isinstance(body, VersionCommitted)
    assert (body.snapshot, body.aliases) == (None, [])


def test_a_deletion_written_before_reason_existed_decodes_with_no_reason():
    """``VersionDeleted.reason`` came later: older deletions decode with an empty reason."""
    import msgspec

    old = msgspec.msgpack.encode(
        {
            "stream": "p/artifacts/x",
            "seq": 4,
            "time": 0.0,
            "actor": "u:a",
            "prev": "",
            "body": {"kind": "version.deleted", "version": 0, "aliases": ["best"]},
        }
    )
    body = decode(old, "s", 4).body
    assert body == VersionDeleted(0, ["best"])
    assert body.reason == ""
    new = Record("p/artifacts/x", 5, 0.0, "u:a", "", VersionDeleted(1, [], reason="ttl"))
    assert decode(encode(new), "s", 5).body == VersionDeleted(1, [], reason="ttl")
