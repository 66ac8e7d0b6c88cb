"""One conformance suite for the ``EventLog`` contract (ranged reads, notes, listing by prefix,
checkpoints), run on every backend; then what only the local log can show: how many bytes a
ranged read reads, which folders a listing visits, and what damage to its derived files costs.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from _records import TokenLog, _body, _token, chain
from _serving import Server

from asyncart import ConflictError, InvalidInputError, LocalStore
from asyncart._backends._framing import ENTRY_SIZE, HEAD_SIZE, SLOT_SIZE, decode_head
from asyncart._backends.base import MAX_NOTE, EventLog
from asyncart._backends.http import HttpStore
from asyncart._backends.pg_log import PostgresEventLog
from asyncart._domain.events import decode, record_hash
from asyncart._domain.fold import CollectionState, RunState, fold, fold_run
from asyncart._domain.notes import note_of

A, B = "p/artifacts/a", "p/artifacts/b"


class RecordLog(TokenLog):
    """The contract as the library uses it, on any backend: each token travels as a real
    record (a server validates them), and each append carries the note a correct client
    derives from the stream's records (the HTTP server derives it itself, and must agree).

    ``server_derived``: the backend's server keeps notes and checkpoints itself, from the
    records it accepted (HTTP): a client's checkpoint is then ignored, as the contract allows.
    """

    def __init__(self, log: EventLog, server_derived: bool) -> None:
        super().__init__(log)
        self._inner = log
        self.server_derived = server_derived

    async def read(self, stream: str, from_seq: int = 0, limit: int | None = None) -> list[bytes]:
        payloads = await self._inner.read(stream, from_seq, limit)
        return [_token(decode(p, stream, seq)) for seq, p in enumerate(payloads, from_seq)]

    async def append(self, stream: str, payloads: Sequence[bytes], expected_seq: int) -> int:
        stored = await self._inner.read(stream)
        prev = record_hash(stored[expected_seq - 1]) if 0 < expected_seq <= len(stored) else ""
        bodies = [_body(stream, seq, p) for seq, p in enumerate(payloads, expected_seq)]
        records = chain(stream, bodies, expected_seq, prev)
        fits = expected_seq <= len(stored)  # else it conflicts: no note to derive
        note = _derived_note(stream, [*stored[:expected_seq], *records]) if fits else b""
        return await self._inner.append(stream, records, expected_seq, note)

    async def derived_note(self, stream: str) -> bytes:
        """The note of ``stream`` as its records say it should be."""
        return _derived_note(stream, await self._inner.read(stream))

    async def notes(self, prefix: str) -> dict[str, bytes]:
        return await self._inner.notes(prefix)

    async def checkpoint(self, stream: str) -> bytes | None:
        return await self._inner.checkpoint(stream)

    async def put_checkpoint(self, stream: str, data: bytes) -> None:
        await self._inner.put_checkpoint(stream, data)


def _derived_note(stream: str, payloads: Sequence[bytes]) -> bytes:
    records = [decode(p, stream, seq) for seq, p in enumerate(payloads)]
    if "/runs/" in stream:
        return note_of(fold_run(RunState(stream), records))
    return note_of(fold(CollectionState(stream), records))


@pytest.fixture(params=["local", "http", "pg", "http-pg"])
def served(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, str] | str | None]:
    """None for the local log, a server's URL and a token (made here, off the loop) for the
    HTTP one (serving a local store, or a PostgreSQL + S3 one), a DSN for the PostgreSQL one."""
    if request.param == "local":
        yield None
        return
    if request.param == "pg":
        yield request.getfixturevalue("pg_dsn")
        return
    if request.param == "http":
        server: Server = request.getfixturevalue("server")
        yield server.url, server.token("*", write=True)
        return
    on_pg = Server(tmp_path / "served", store=request.getfixturevalue("pg_s3_store")).start()
    try:
        yield on_pg.url, on_pg.token("*", write=True)
    finally:
        on_pg.stop()


@pytest.fixture
async def log(served: tuple[str, str] | str | None, tmp_path: Path) -> AsyncIterator[RecordLog]:
    """The log of a local store, of a served store through the HTTP client, or of a
    PostgreSQL database."""
    if served is None:
        yield RecordLog(LocalStore(tmp_path / "store").log, server_derived=False)
        return
    if isinstance(served, str):
        pg = PostgresEventLog(served)
        await pg.create()
        async with pg.held():
            yield RecordLog(pg, server_derived=False)
        return
    async with HttpStore(*served) as store:
        yield RecordLog(store.log, server_derived=True)  # type: ignore[arg-type]


def _tokens(n: int) -> list[bytes]:
    return [f"r{i}".encode() for i in range(n)]


async def _fill(
    log: RecordLog, stream: str, n: int, sizes: Sequence[int] = (1, 3, 2)
) -> list[bytes]:
    """``n`` records in appends of the given sizes in turn (some of several records)."""
    records, seq, turn = _tokens(n), 0, 0
    while seq < n:
        batch = records[seq : seq + sizes[turn % len(sizes)]]
        seq = await log.append(stream, batch, seq)
        turn += 1
    return records


# -- the contract, on every backend -------------------------------------------------------------


async def test_ranged_reads(log: RecordLog) -> None:
    records = await _fill(log, A, 9)
    for from_seq in (0, 1, 3, 4, 8, 9, 10, 1000):
        for limit in (None, 0, 1, 2, 5, 10**9):
            want = records[from_seq:] if limit is None else records[from_seq:][:limit]
            assert await log.read(A, from_seq, limit) == want, (from_seq, limit)
    assert await log.read("p/artifacts/never", 0, 5) == []


async def test_a_conflicting_append_writes_nothing(log: RecordLog) -> None:
    assert await log.append(A, _tokens(2), 0) == 2
    note = await log.notes(A)
    for stale in (0, 1, 3):
        with pytest.raises(ConflictError) as info:
            await log.append(A, [b"late"], stale)
        assert info.value.head == 2
    assert await log.read(A) == _tokens(2)
    assert await log.notes(A) == note


async def test_each_append_publishes_its_note(log: RecordLog) -> None:
    for seq, stream in enumerate([A, A, B, A, "p/runs/r1", "p/runs/r1"]):
        head = len(await log.read(stream))
        await log.append(stream, [f"t{seq}".encode()], head)
        listed = await log.notes("p/")
        assert listed[stream] == await log.derived_note(stream) != b""
    assert sorted(listed) == [A, B, "p/runs/r1"]


async def test_notes_are_listed_by_prefix(log: RecordLog) -> None:
    names = [A, "p/artifacts/ab", B, "p/runs/r1", "q/artifacts/a"]
    for stream in names:
        await log.append(stream, [b"r0"], 0)
    notes = {stream: await log.derived_note(stream) for stream in names}
    assert await log.notes("p/artifacts/") == {n: notes[n] for n in names[:3]}
    assert await log.notes("p/artifacts/a") == {n: notes[n] for n in names[:2]}
    assert await log.notes("p/runs/") == {"p/runs/r1": notes["p/runs/r1"]}
    assert await log.notes("z/") == {}


async def test_streams_by_prefix(log: RecordLog) -> None:
    names = ["p/artifacts/a", "p/artifacts/ab", "p/artifacts/b", "p/runs/r1", "pq/artifacts/a"]
    for stream in reversed(names):
        await log.append(stream, [b"r0"], 0)
    assert await log.streams() == names
    assert await log.streams("p/") == names[:4]
    assert await log.streams("p/artifacts/") == names[:3]
    assert await log.streams("p/artifacts/a") == names[:2]  # a partial name
    assert await log.streams("p/art") == names[:3]
    assert await log.streams("p") == names
    assert await log.streams("p/runs/r1") == ["p/runs/r1"]
    assert await log.streams("q/") == []


async def test_checkpoints_round_trip_and_are_replaced(log: RecordLog) -> None:
    """What a client saves comes back (a backend whose server derives checkpoints keeps its
    own instead, and never takes the client's); none is there until one is saved."""
    assert await log.checkpoint(A) is None  # no stream
    await log.append(A, [b"r0"], 0)
    assert await log.checkpoint(A) is None  # a stream without one
    big = os.urandom(300_000)
    for data in (b"state at 1", big, b""):
        await log.put_checkpoint(A, data)
        assert await log.checkpoint(A) == (None if log.server_derived else data)
    assert await log.checkpoint(B) is None  # per stream
    assert await log.read(A) == [b"r0"]  # the log is untouched
    assert await log.streams("p/") == [A]
    assert await log.append(A, [b"r1"], 1) == 2


# -- the local log: what a read costs ---------------------------------------------------------


class _Reads:
    """Counts the bytes read from files (every ``os.pread`` and ``os.read``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes = 0
        for name in ("pread", "read"):
            monkeypatch.setattr(os, name, self._counted(getattr(os, name)))

    def _counted(self, real: Callable[..., bytes]) -> Callable[..., bytes]:
        def counted(*args: Any) -> bytes:
            data = real(*args)
            self.bytes += len(data)
            return data

        return counted

    def since(self, mark: int) -> int:
        return self.bytes - mark


RECORD = 1000  # payload bytes of each record of the long stream
FRAME = RECORD + 12


async def _long_stream(root: Path, n: int = 2000) -> list[bytes]:
    """``n`` records of ``RECORD`` bytes each in stream A, in appends of 1 to 7 records."""
    log = LocalStore(root).log
    records = [f"{i:06d}".encode().ljust(RECORD, b".") for i in range(n)]
    seq, size = 0, 1
    while seq < n:
        seq = await log.append(
            A, records[seq : seq + size], seq, note=f"{min(seq + size, n)} records".encode()
        )
        size = size % 7 + 1
    return records


def _bound(records: int) -> int:
    """The most a ranged read of ``records`` records may read: the head, two index entries
    and two frame headers to check them, and the records."""
    return HEAD_SIZE + 2 * (ENTRY_SIZE + 12) + records * FRAME


async def test_a_ranged_read_in_a_fresh_process_reads_only_its_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = await _long_stream(tmp_path / "store")
    size = (tmp_path / f"store/log/{A}.log").stat().st_size
    reads = _Reads(monkeypatch)
    for from_seq, limit in [(1995, None), (1000, 5), (0, 3), (1999, 10), (7, 1)]:
        fresh = LocalStore(tmp_path / "store").log  # as a new process: nothing cached
        mark = reads.bytes
        want = records[from_seq:][:limit]
        assert await fresh.read(A, from_seq, limit) == want
        assert reads.since(mark) <= _bound(len(want)), (from_seq, limit)
    mark = reads.bytes
    assert len(await LocalStore(tmp_path / "store").log.read(A)) == 2000
    assert reads.since(mark) >= size  # the counting sees a whole read


async def test_a_long_lived_log_reads_pages_without_rereading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server reads a stream page by page: each page costs its own records, not the rest."""
    records = await _long_stream(tmp_path / "store", 600)
    log = LocalStore(tmp_path / "store").log
    reads, got = _Reads(monkeypatch), []
    while page := await log.read(A, len(got), 50):
        got += page
    assert got == records
    assert reads.bytes <= 13 * _bound(0) + len(records) * FRAME  # 12 pages and an empty one


async def test_notes_read_only_heads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    await _long_stream(tmp_path / "store", 300)
    reads = _Reads(monkeypatch)
    assert await LocalStore(tmp_path / "store").log.notes("p/") == {A: b"300 records"}
    assert reads.bytes <= HEAD_SIZE


# -- the local log: damage to derived files costs a scan, never a wrong record ------------------


def _damage_index(idx: Path, how: str, other: Path) -> None:
    data = idx.read_bytes()
    match how:
        case "missing":
            idx.unlink()
        case "short":
            idx.write_bytes(data[: len(data) // 3 + 5])
        case "zeros":
            idx.write_bytes(bytes(len(data)))
        case "garbage":
            idx.write_bytes(os.urandom(len(data)))
        case "bit-flips":
            flipped = bytearray(data)
            for at in range(3, len(flipped), 97):
                flipped[at] ^= 0x10
            idx.write_bytes(bytes(flipped))
        case "another-streams":  # well-formed entries, but of other records
            idx.write_bytes(other.read_bytes())
        case "shifted":  # each entry names the record before its own
            idx.write_bytes(data[ENTRY_SIZE:] + data[-ENTRY_SIZE:])


@pytest.mark.parametrize(
    "how", ["missing", "short", "zeros", "garbage", "bit-flips", "another-streams", "shifted"]
)
async def test_a_damaged_index_still_gives_the_right_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    records = await _long_stream(tmp_path / "store", 400)
    other = LocalStore(tmp_path / "store").log
    for seq in range(0, 300, 3):  # records of another size at other offsets
        await other.append(B, [b"x" * (seq % 50), b"y", b"z" * 7], seq)
    folder = tmp_path / "store/log/p/artifacts"
    _damage_index(folder / "a.idx", how, folder / "b.idx")
    for from_seq, limit in [(395, None), (200, 5), (0, 2), (399, 1), (13, 50)]:
        fresh = LocalStore(tmp_path / "store").log
        assert await fresh.read(A, from_seq, limit) == records[from_seq:][:limit]
    reads = _Reads(monkeypatch)  # a read repaired the index: the next costs its records again
    assert await LocalStore(tmp_path / "store").log.read(A, 100, 5) == records[100:105]
    assert reads.bytes <= _bound(5)


async def test_an_index_of_a_log_restored_from_a_backup_is_not_trusted(tmp_path: Path) -> None:
    """The log and head go back to an older copy, then take other records: entries the index
    kept for the lost ones never name the new ones."""
    log = LocalStore(tmp_path / "store").log
    path = tmp_path / f"store/log/{A}.log"
    await log.append(A, [b"one"], 0)
    backup = {p: p.read_bytes() for p in (path, path.with_suffix(".head"))}
    await log.append(A, [b"a longer second", b"third", b"fourth"], 1)
    for name, data in backup.items():
        name.write_bytes(data)
    await LocalStore(tmp_path / "store").log.append(A, [b"2", b"3rd"], 1)
    await LocalStore(tmp_path / "store").log.append(A, [b"the fourth"], 3)
    for from_seq in range(5):
        want = [b"one", b"2", b"3rd", b"the fourth"][from_seq:]
        assert await LocalStore(tmp_path / "store").log.read(A, from_seq, 2) == want[:2]
        assert await LocalStore(tmp_path / "store").log.read(A, from_seq) == want


# -- the local log: notes in the head ---------------------------------------------------------


def _head(store: Path, stream: str = A) -> Path:
    return store / "log" / f"{stream}.head"


async def test_a_torn_head_slot_falls_back_to_the_other_with_its_note(tmp_path: Path) -> None:
    log = LocalStore(tmp_path / "store").log
    await log.append(A, [b"r0"], 0, note=b"one record")
    await log.append(A, [b"r1"], 1, note=b"two records")
    path = _head(tmp_path / "store")
    data = bytearray(path.read_bytes())
    at = decode_head(bytes(data), A).generation % 2 * SLOT_SIZE  # the slot written last
    data[at + 40 : at + 48] = bytes(8)  # a power cut tore that write: inside its note
    path.write_bytes(bytes(data))
    fresh = LocalStore(tmp_path / "store").log
    assert await fresh.notes("p/") == {A: b"one record"}
    assert await fresh.read(A) == [b"r0"]
    with pytest.raises(ConflictError):  # r1 lies past the head: rolled forward, kept
        await fresh.append(A, [b"other"], 1, note=b"other")
    assert await fresh.read(A) == [b"r0", b"r1"]
    assert await fresh.notes("p/") == {A: b""}  # r1's own note was lost with it: none


async def test_a_rolled_forward_append_leaves_no_note(tmp_path: Path) -> None:
    """An append that wrote its records but not its head never returned: the next append
    rolls its records forward, and the stream has no note (the previous one no longer
    describes it; readers fold) until an append that returns writes one."""
    log = LocalStore(tmp_path / "store").log
    await log.append(A, [b"r0"], 0, note=b"note 0")
    before = _head(tmp_path / "store").read_bytes()
    await log.append(A, [b"r1", b"r2"], 1, note=b"note 1")
    _head(tmp_path / "store").write_bytes(before)  # killed before its head write
    with (tmp_path / f"store/log/{A}.log").open("ab") as f:
        f.write(b"\x07\x00\x00")  # and another append torn after it
    fresh = LocalStore(tmp_path / "store").log
    assert await fresh.read(A) == [b"r0"]
    assert await fresh.notes("p/") == {A: b"note 0"}
    with pytest.raises(ConflictError):  # rolls r1 and r2 forward, then finds the head moved
        await fresh.append(A, [b"r1 again"], 1, note=b"stale")
    assert await fresh.read(A) == [b"r0", b"r1", b"r2"]
    assert await fresh.notes("p/") == {A: b""}
    assert await fresh.append(A, [b"r3"], 3, note=b"note 3") == 4
    assert await LocalStore(tmp_path / "store").log.read(A) == [b"r0", b"r1", b"r2", b"r3"]
    assert await LocalStore(tmp_path / "store").log.notes(A) == {A: b"note 3"}
    assert await LocalStore(tmp_path / "store").log.read(A, 2, 1) == [b"r2"]


def _v1_head(*slots: tuple[int, int, int]) -> bytes:
    """A head file as the previous release wrote it: ``AHD1`` slots of (generation, records,
    end) without a note, each 32 bytes and a crc32."""
    out = b""
    for slot in slots:
        body = struct.pack("<4sQQQ", b"AHD1", *slot)
        out += body + struct.pack("<I", zlib.crc32(body))
    return out


async def test_a_previous_release_head_is_read_and_rewritten_by_the_next_append(
    tmp_path: Path,
) -> None:
    log = LocalStore(tmp_path / "store").log
    await log.append(A, [b"r0", b"r1"], 0)
    end = (tmp_path / f"store/log/{A}.log").stat().st_size
    await log.append(A, [b"r2"], 2)  # v1 of the head will not acknowledge this one
    _head(tmp_path / "store").write_bytes(_v1_head((2, 2, end), (1, 0, 0)))
    (tmp_path / f"store/log/{A}.idx").unlink()  # that release kept none
    fresh = LocalStore(tmp_path / "store").log
    assert await fresh.read(A) == [b"r0", b"r1"]
    assert await fresh.read(A, 1, 1) == [b"r1"]
    assert await fresh.notes("p/") == {A: b""}
    assert await fresh.append(A, [b"r3"], 3, note=b"upgraded") == 4  # r2 rolled forward
    data = _head(tmp_path / "store").read_bytes()
    assert len(data) == HEAD_SIZE and b"AHD2" in data and b"AHD1" not in data
    assert decode_head(data, A).records == 4
    again = LocalStore(tmp_path / "store").log
    assert await again.read(A) == [b"r0", b"r1", b"r2", b"r3"]
    assert await again.notes("p/") == {A: b"upgraded"}


async def test_each_append_replaces_the_note(tmp_path: Path) -> None:
    """A note is the caller's bytes, whatever they are, replaced by each append."""
    log = LocalStore(tmp_path / "store").log
    await log.append(A, [b"r0"], 0, note=b"first")
    assert await log.notes("p/") == {A: b"first"}
    await log.append(A, [b"r1", b"r2"], 1, note=b"second")
    assert await log.notes("p/") == {A: b"second"}
    await log.append(A, [b"r3"], 3)  # no note given: the stream has none any more
    assert await log.notes("p/") == {A: b""}
    largest = bytes(range(256)) * (MAX_NOTE // 256)
    await log.append(A, [b"r4"], 4, note=largest)
    assert await LocalStore(tmp_path / "store").log.notes("p/") == {A: largest}
    assert await log.read(A) == [f"r{i}".encode() for i in range(5)]


async def test_a_note_over_the_limit_is_refused_and_nothing_written(tmp_path: Path) -> None:
    log = LocalStore(tmp_path / "store").log
    await log.append(A, [b"r0"], 0, note=b"kept")
    with pytest.raises(InvalidInputError, match=f"over the {MAX_NOTE}"):
        await log.append(A, [b"r1"], 1, note=bytes(MAX_NOTE + 1))
    assert await log.read(A) == [b"r0"]
    assert await log.notes(A) == {A: b"kept"}


# -- the local log: listing visits the prefix's folder only ------------------------------------


async def test_listing_visits_only_the_prefixs_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = LocalStore(tmp_path / "store").log
    for stream in ("p/artifacts/a", "p/artifacts/na", "p/runs/r", "q/artifacts/a", "q/runs/r"):
        await log.append(stream, [b"r0"], 0, note=stream.encode())
    await log.put_checkpoint("p/artifacts/a", b"checkpoint")
    visited: list[str] = []
    for name in ("scandir", "listdir", "walk"):
        real = getattr(os, name)

        def spy(path: Any = ".", *args: Any, _real: Any = real, **kwargs: Any) -> Any:
            visited.append(Path(path).relative_to(tmp_path / "store/log").as_posix())
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, spy)

    async def folders(call: Any) -> list[str]:
        visited.clear()
        await call
        return sorted(visited)

    assert await folders(log.streams("p/artifacts/")) == ["p/artifacts"]
    assert await folders(log.streams("p/artifacts/n")) == ["p/artifacts"]
    assert await folders(log.notes("p/artifacts/")) == ["p/artifacts"]
    assert await folders(log.streams("p/")) == ["p", "p/artifacts", "p/runs"]
    assert await folders(log.streams("p/r")) == ["p", "p/runs"]
    assert await folders(log.streams("")) == sorted(
        [".", "p", "p/artifacts", "p/runs", "q", "q/artifacts", "q/runs"]
    )
    assert await log.streams("p/artifacts/") == ["p/artifacts/a", "p/artifacts/na"]
    assert await log.streams("../") == []


async def test_listing_descends_only_where_a_match_can_be(tmp_path: Path) -> None:
    """The log assumes nothing of how names are made beyond folders: a partial name can
    match a folder, and derived or temporary files are never streams."""
    log = LocalStore(tmp_path / "store").log
    for stream in ("p/artifacts/dir/x", "p/artifacts/dx", "p/artifacts/e/x"):
        await log.append(stream, [b"r0"], 0)
    await log.put_checkpoint("p/artifacts/only-a-checkpoint", b"c")
    folder = tmp_path / "store/log/p/artifacts"
    for stray in ("gone.idx", ".dx.ckpt.0a1b2c3d.tmp", ".dx.head.0a1b2c3d.tmp", "dx.log.idx"):
        (folder / stray).write_bytes(b"not a stream")
    assert await log.streams("p/artifacts/d") == ["p/artifacts/dir/x", "p/artifacts/dx"]
    assert await log.streams("p/artifacts/dir/") == ["p/artifacts/dir/x"]
    assert await log.streams("p/") == ["p/artifacts/dir/x", "p/artifacts/dx", "p/artifacts/e/x"]
    assert await log.checkpoint("p/artifacts/only-a-checkpoint") == b"c"
    assert await log.read("p/artifacts/only-a-checkpoint") == []


async def test_a_checkpoint_that_cannot_be_read_is_an_error_not_none(tmp_path: Path) -> None:
    log = LocalStore(tmp_path / "store").log
    await log.append(A, [b"r0"], 0)
    (tmp_path / f"store/log/{A}.ckpt").mkdir()  # neither missing nor a file
    with pytest.raises(OSError):
        await log.checkpoint(A)
    assert await log.read(A) == [b"r0"]


async def test_a_checkpoint_in_a_new_store_marks_it_as_one_with_heads(tmp_path: Path) -> None:
    """Saving a checkpoint first must not make a new store look like a previous release's
    (one without heads, whose logs are read by the old rules)."""
    log = LocalStore(tmp_path / "store").log
    await log.put_checkpoint(A, b"c")
    assert (tmp_path / "store/log/.format").exists()


async def test_fresh_readers_racing_appends_read_exactly_the_records(tmp_path: Path) -> None:
    """Readers as new processes (each read a fresh log: the index file, its checks and its
    repair) while appends extend the log and the index: every read is the log's own slice."""
    root = tmp_path / "store"
    writer_log, seen = LocalStore(root).log, []
    await writer_log.append(A, [b"start"], 0)
    latest, done = 1, False

    async def writer(w: int) -> None:
        nonlocal latest
        seq = 0
        for i in range(60):
            batch = [f"{w}-{i}-{k}".encode() * (1 + i % 5) for k in range(1 + i % 3)]
            while True:
                try:
                    seq = await writer_log.append(A, batch, seq, note=f"{w}-{i}".encode())
                    break
                except ConflictError as moved:
                    seq = moved.head
            latest = max(latest, seq)

    async def reader(r: int) -> None:
        for n in range(10_000):  # bounded; in practice ends with the writers
            acknowledged = latest
            seq, limit = max(acknowledged - 1 - (n * 7 + r) % 40, 0), 1 + n % 6
            got = await LocalStore(root).log.read(A, seq, limit)
            assert len(got) >= min(limit, acknowledged - seq)
            seen.append((seq, got))
            if done:
                return

    async with anyio.create_task_group() as readers:
        for r in range(3):
            readers.start_soon(reader, r)
        async with anyio.create_task_group() as writers:
            for w in range(3):
                writers.start_soon(writer, w)
        done = True
    records = await LocalStore(root).log.read(A)
    assert seen and all(got == records[seq : seq + len(got)] for seq, got in seen)


async def test_an_index_that_cannot_be_written_costs_nothing_but_scans(tmp_path: Path) -> None:
    """The index is written after the head, and its errors are ignored: the append stands."""
    log = LocalStore(tmp_path / "store").log
    await log.append(A, [b"r0"], 0)
    idx = tmp_path / f"store/log/{A}.idx"
    idx.unlink()
    idx.mkdir()  # neither readable nor writable as a file
    assert await log.append(A, [b"r1", b"r2"], 1, note=b"kept") == 3
    assert await LocalStore(tmp_path / "store").log.read(A, 1, 1) == [b"r1"]
    assert await LocalStore(tmp_path / "store").log.notes(A) == {A: b"kept"}
