"""The local log keeps every acknowledged version: damage is reported, never read as a torn write.

Each stream has a durable head (``NAME.head``: how many records were acknowledged and where
they end). These tests damage real store files with plain file I/O, or stop and kill real
writer processes between their writes, and check what readers, ``audit`` and the next append do.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from pathlib import Path

import anyio
import pytest
from _processes import wait_stopped

import asyncart
from asyncart._backends._framing import SLOT_SIZE, decode_head, frames, scan

STREAM = "demo/artifacts/ds"


def _log(store: str) -> Path:
    return Path(store) / "log" / f"{STREAM}.log"


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


async def _save(store: str, folder: Path) -> asyncart.Artifact:
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_dir(folder)
    return await artifact.save("demo", store)


async def _two_versions(store: str, tmp_path: Path) -> int:
    """v0 and v1 of demo/ds; return where v1's append starts in the log."""
    await _save(store, _tree(tmp_path / "v0", {"a.txt": b"first\n"}))
    v1_starts = _log(store).stat().st_size
    await _save(store, _tree(tmp_path / "v1", {"b.txt": b"second\n"}))
    return v1_starts


async def _assert_damage_is_kept(store: str, tmp_path: Path, seq: int, what: str) -> None:
    """Reads raise naming stream and seq, audit names it, a save refuses, nothing is rewritten."""
    evidence = _log(store).read_bytes()
    api = asyncart.Api("demo", store=store)
    with pytest.raises(asyncart.IntegrityError, match=f"{STREAM}' seq {seq}\\b.*{what}"):
        await api.artifact("ds")
    with pytest.raises(asyncart.IntegrityError, match=f"seq {seq}\\b"):
        await api.artifact("ds:v0")  # the stream as a whole is untrusted until repaired
    report = await asyncart.audit("demo", store=store)
    [problem] = report.problems
    assert problem.stream == STREAM, str(report)
    assert f"seq {seq}" in problem.message and what in problem.message, str(report)
    with pytest.raises(asyncart.IntegrityError, match=f"seq {seq}\\b"):
        await _save(store, _tree(tmp_path / "v2", {"c.txt": b"third\n"}))
    assert _log(store).read_bytes() == evidence  # not truncated, nothing written over it


async def test_a_bit_flip_in_the_last_record_is_damage_not_a_torn_write(
    store: str, tmp_path: Path
) -> None:
    await _two_versions(store, tmp_path)
    data = bytearray(_log(store).read_bytes())
    last = len(scan(bytes(data), 0, 0, STREAM).offsets) - 1
    data[-3] ^= 0x04  # inside the payload of the last record (v1's version.committed)
    _log(store).write_bytes(bytes(data))
    await _assert_damage_is_kept(store, tmp_path, last, "checksum mismatch")


async def test_a_log_cut_at_a_frame_boundary_is_damage(store: str, tmp_path: Path) -> None:
    v1_starts = await _two_versions(store, tmp_path)
    good = _log(store).read_bytes()[:v1_starts]
    os.truncate(_log(store), v1_starts)  # v1's whole append is gone: only v0 is left
    first_missing = len(scan(good, 0, 0, STREAM).offsets)
    await _assert_damage_is_kept(store, tmp_path, first_missing, "cut short")


async def test_a_cut_is_caught_by_a_process_that_has_read_the_stream_before(
    tmp_path: Path,
) -> None:
    """A long-lived process (a server) keeps an index of what it checked: a cut still shows."""
    store = asyncart.LocalStore(tmp_path / "store")
    await store.log.append("p/artifacts/a", [b"one"], 0)
    boundary = (tmp_path / "store/log/p/artifacts/a.log").stat().st_size
    await store.log.append("p/artifacts/a", [b"two", b"three"], 1)
    assert await store.log.read("p/artifacts/a") == [b"one", b"two", b"three"]
    os.truncate(tmp_path / "store/log/p/artifacts/a.log", boundary)
    with pytest.raises(asyncart.IntegrityError, match="'p/artifacts/a' seq 1: missing"):
        await store.log.read("p/artifacts/a")
    with pytest.raises(asyncart.IntegrityError, match="seq 1: missing"):
        await store.log.append("p/artifacts/a", [b"other"], 1)
    assert (tmp_path / "store/log/p/artifacts/a.log").stat().st_size == boundary


async def test_a_lost_head_file_is_damage_in_a_store_that_has_heads(
    store: str, tmp_path: Path
) -> None:
    await _two_versions(store, tmp_path)
    _log(store).with_suffix(".head").unlink()
    evidence = _log(store).read_bytes()
    with pytest.raises(asyncart.IntegrityError, match="head file .* is missing"):
        await asyncart.Api("demo", store=store).artifact("ds")
    [problem] = (await asyncart.audit("demo", store=store)).problems
    assert problem.stream == STREAM and "head file" in problem.message
    with pytest.raises(asyncart.IntegrityError, match="head file"):
        await _save(store, _tree(tmp_path / "v2", {"c.txt": b"third\n"}))
    assert _log(store).read_bytes() == evidence


async def test_a_lost_log_file_is_damage(store: str, tmp_path: Path) -> None:
    await _two_versions(store, tmp_path)
    _log(store).unlink()
    with pytest.raises(asyncart.IntegrityError, match="log file .* is missing"):
        await asyncart.Api("demo", store=store).artifact("ds")
    [problem] = (await asyncart.audit("demo", store=store)).problems
    assert problem.stream == STREAM and "missing" in problem.message


async def test_records_past_the_head_are_unseen_then_rolled_forward_and_garbage_dropped(
    store: str, tmp_path: Path
) -> None:
    """Bytes past the head are an append that never returned: whole ones are kept by the next
    append (they may already be durable), a torn rest is truncated; readers see neither."""
    await _save(store, _tree(tmp_path / "v0", {"a.txt": b"first\n"}))
    before = await asyncart.Api("demo", store=store).artifact("ds")
    records = await asyncart.LocalStore(store).log.read(STREAM)
    head_bytes = _log(store).with_suffix(".head").read_bytes()
    await _save(store, _tree(tmp_path / "v1", {"b.txt": b"second\n"}))
    v1_records = (await asyncart.LocalStore(store).log.read(STREAM))[len(records) :]
    _log(store).with_suffix(".head").write_bytes(head_bytes)  # v1's head write never happened
    with _log(store).open("ab") as f:
        f.write(frames([b"a torn append"])[0][:-4])  # ... and another append was cut short

    assert (await asyncart.Api("demo", store=store).artifact("ds")).version == before.version
    assert await asyncart.LocalStore(store).log.read(STREAM) == records
    assert (await asyncart.audit("demo", store=store)).ok

    v2 = await _save(store, _tree(tmp_path / "v2", {"c.txt": b"third\n"}))
    assert v2.version == "v2"  # v1 was rolled forward: its number is not taken by another
    after = await asyncart.LocalStore(store).log.read(STREAM)
    assert after[: len(records) + len(v1_records)] == records + v1_records
    assert b"a torn append" not in _log(store).read_bytes()
    v1 = await asyncart.Api("demo", store=store).artifact("ds:v1")
    assert list(v1.manifest.entries) == ["b.txt"]
    assert (await asyncart.audit("demo", store=store)).ok


async def test_an_old_store_without_head_files_still_reads_and_appends(
    store: str, tmp_path: Path
) -> None:
    """A store of the previous release: the same log files, no heads and no format marker."""
    await _two_versions(store, tmp_path)
    for head in Path(store, "log").rglob("*.head"):
        head.unlink()
    Path(store, "log", ".format").unlink()
    with _log(store).open("ab") as f:
        f.write(b"\x05\x00")  # the old rules still hold: a torn last append is ignored
    api = asyncart.Api("demo", store=store)
    assert (await api.artifact("ds")).version == "v1"
    assert (await asyncart.audit("demo", store=store)).ok

    v2 = await _save(store, _tree(tmp_path / "v2", {"c.txt": b"third\n"}))
    assert v2.version == "v2"
    assert _log(store).with_suffix(".head").exists()  # upgraded by its first append
    assert (await asyncart.audit("demo", store=store)).ok
    os.truncate(_log(store), _log(store).stat().st_size - 1)  # now a cut is caught
    with pytest.raises(asyncart.IntegrityError, match="seq"):
        await asyncart.Api("demo", store=store).artifact("ds")


async def test_a_torn_head_write_falls_back_to_the_previous_slot(
    store: str, tmp_path: Path
) -> None:
    await _two_versions(store, tmp_path)
    path = _log(store).with_suffix(".head")
    data = bytearray(path.read_bytes())
    at = decode_head(bytes(data), STREAM).generation % 2 * SLOT_SIZE  # the slot v1 wrote
    data[at + SLOT_SIZE - 6 : at + SLOT_SIZE] = bytes(6)  # a power cut tore that write
    path.write_bytes(bytes(data))
    api = asyncart.Api("demo", store=store)
    assert (await api.artifact("ds")).version == "v0"  # v1's records now lie past the head
    assert (await asyncart.audit("demo", store=store)).ok
    v2 = await _save(store, _tree(tmp_path / "v2", {"c.txt": b"third\n"}))
    assert v2.version == "v2"  # ... and were rolled forward, not overwritten
    assert list((await api.artifact("ds:v1")).manifest.entries) == ["b.txt"]

    path.write_bytes(bytes(2 * SLOT_SIZE))  # both slots lost
    with pytest.raises(asyncart.IntegrityError, match="head file is damaged"):
        await api.artifact("ds")


# -- real writer processes, stopped or killed between their writes ----------------------------

WRITER = r"""
import asyncio, os, signal, sys
import asyncart
from asyncart._backends import local_log

store, folder, how = sys.argv[1:4]
if how == "stop-before-fdatasync":  # stopped after writing its records, before syncing them
    real = os.fdatasync

    def fdatasync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("ds.log"):
            os.fdatasync = real
            os.kill(os.getpid(), signal.SIGSTOP)
        real(fd)

    os.fdatasync = fdatasync
elif how == "kill-before-head":  # records written and synced, then killed before the head
    def die(fd, head):
        os.kill(os.getpid(), signal.SIGKILL)

    local_log._write_head = die


async def main():
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_dir(folder)
    print((await artifact.save("demo", store)).version)


asyncio.run(main())
"""


async def test_readers_do_not_see_records_a_writer_has_not_synced(
    store: str, tmp_path: Path
) -> None:
    await _save(store, _tree(tmp_path / "v0", {"a.txt": b"first\n"}))
    folder = _tree(tmp_path / "v1", {"b.txt": b"second\n"})
    writer = await anyio.open_process(
        [sys.executable, "-c", WRITER, store, str(folder), "stop-before-fdatasync"]
    )
    async with writer:
        try:
            await wait_stopped(writer.pid)  # between its write and its fdatasync
            size = _log(store).stat().st_size
            assert size > 0 and b"b.txt" in _log(store).read_bytes()  # v1's records are there
            api = asyncart.Api("demo", store=store)
            assert (await api.artifact("ds")).version == "v0"  # ... but not durable: unseen
            with pytest.raises(asyncart.NotFoundError):
                await api.artifact("ds:v1")
        finally:
            writer.send_signal(signal.SIGCONT)
        assert await writer.wait() == 0
    assert (await asyncart.Api("demo", store=store).artifact("ds")).version == "v1"


async def test_a_writer_killed_before_its_head_write_loses_nothing_and_renumbers_nothing(
    store: str, tmp_path: Path
) -> None:
    await _save(store, _tree(tmp_path / "v0", {"a.txt": b"first\n"}))
    folder = _tree(tmp_path / "v1", {"b.txt": b"second\n"})
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, "-c", WRITER, store, str(folder), "kill-before-head"], check=False
        )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    api = asyncart.Api("demo", store=store)
    assert (await api.artifact("ds")).version == "v0"  # its append never returned: unseen
    v2 = await _save(store, _tree(tmp_path / "v2", {"c.txt": b"third\n"}))
    assert v2.version == "v2"  # the dead writer's complete records were rolled forward as v1
    assert list((await api.artifact("ds:v1")).manifest.entries) == ["b.txt"]
    assert (await asyncart.audit("demo", store=store)).ok


# -- new directories are durable in their parents --------------------------------------------


@pytest.mark.allow_blocking
def test_each_new_log_directory_is_synced_in_its_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # a spy: the real fsync runs, and which directory is noted
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    root = tmp_path / "store"
    anyio.run(asyncart.LocalStore(root).log.append, "p/artifacts/a", [b"one"], 0)
    for new in (root, root / "log", root / "log/p", root / "log/p/artifacts"):
        assert str(new.parent) in synced, f"{new} was created but {new.parent} never synced"
    assert str(root / "log/p/artifacts") in synced  # the new log and head files' entries


async def test_streams_are_files_not_project_directories_named_like_them(tmp_path: Path) -> None:
    store = asyncart.LocalStore(tmp_path / "store")
    for project in ("x.log", "y.head"):
        await store.log.append(f"{project}/artifacts/a", [b"one"], 0)
    assert await store.log.streams() == ["x.log/artifacts/a", "y.head/artifacts/a"]


# -- a crash in a stream's first append -------------------------------------------------------


@pytest.mark.parametrize("head", [b"", bytes(SLOT_SIZE)], ids=["empty-head", "zeroed-head"])
@pytest.mark.parametrize("log", [None, b""], ids=["no-log", "empty-log"])
async def test_a_blank_head_left_by_a_crash_in_a_first_append_holds_no_records(
    tmp_path: Path, head: bytes, log: bytes | None
) -> None:
    """What a power cut in a stream's first append could leave before heads were written whole
    (the head file created, its slot not yet on disk): nothing was acknowledged, so the stream
    is empty and appendable, not damaged."""
    store = asyncart.LocalStore(tmp_path / "store")
    await store.log.append("p/artifacts/other", [b"x"], 0)  # a store with heads (and a marker)
    path = tmp_path / "store/log/p/artifacts/new.log"
    assert (tmp_path / "store/log/.format").exists()
    path.with_suffix(".head").write_bytes(head)
    if log is not None:
        path.write_bytes(log)
    fresh = asyncart.LocalStore(tmp_path / "store")  # as after a restart
    assert await fresh.log.read("p/artifacts/new") == []
    assert await fresh.log.append("p/artifacts/new", [b"one"], 0) == 1
    assert await fresh.log.read("p/artifacts/new") == [b"one"]
    assert await asyncart.LocalStore(tmp_path / "store").log.read("p/artifacts/new") == [b"one"]
    assert decode_head(path.with_suffix(".head").read_bytes(), STREAM).records == 1


async def test_a_blank_head_left_by_a_crash_in_an_upgrade_leaves_the_old_rules(
    store: str, tmp_path: Path
) -> None:
    """A previous release's stream whose first head file was created blank: read as before,
    and upgraded by the next append."""
    await _two_versions(store, tmp_path)
    for head in Path(store, "log").rglob("*.head"):
        head.unlink()
    Path(store, "log", ".format").unlink()
    _log(store).with_suffix(".head").write_bytes(b"")
    assert (await asyncart.Api("demo", store=store).artifact("ds")).version == "v1"
    v2 = await _save(store, _tree(tmp_path / "v2", {"c.txt": b"third\n"}))
    assert v2.version == "v2"
    assert decode_head(_log(store).with_suffix(".head").read_bytes(), STREAM).generation >= 1
    assert (await asyncart.audit("demo", store=store)).ok


# -- one long-lived process (a server): many threads share the stream's index ----------------


async def test_threads_reading_while_others_append_never_see_false_damage(tmp_path: Path) -> None:
    """Readers holding an older head while other threads append and scan: every read is a
    snapshot of some head, never "cut short", and the stream ends with every record in order."""
    log = asyncart.LocalStore(tmp_path / "store").log
    stream, writers, appends = "p/artifacts/a", 4, 200
    latest = 0  # the most records an append has returned so far
    done = anyio.Event()

    async def writer(w: int) -> None:
        nonlocal latest
        seq = 0
        for i in range(appends):
            while True:
                try:
                    seq = await log.append(stream, [f"{w}-{i}".encode()], seq)
                    break
                except asyncart.ConflictError as moved:
                    seq = moved.head
            latest = max(latest, seq)

    async def reader(r: int) -> None:
        rng = random.Random(r)
        for _ in range(100_000):  # bounded, but in practice ends when the writers are done
            acknowledged = latest
            seq = acknowledged - rng.randrange(min(acknowledged, 20) + 1)  # near the head
            assert len(await log.read(stream, seq)) >= acknowledged - seq  # no less than seen
            if done.is_set():
                return

    async with anyio.create_task_group() as readers:
        for r in range(4):
            readers.start_soon(reader, r)
        async with anyio.create_task_group() as tg:
            for w in range(writers):
                tg.start_soon(writer, w)
        done.set()
    records = await log.read(stream)
    assert len(records) == writers * appends
    for w in range(writers):  # each writer's records in the order it appended them
        mine = [r for r in records if r.startswith(f"{w}-".encode())]
        assert mine == [f"{w}-{i}".encode() for i in range(appends)]


async def test_a_process_reads_a_stream_restored_from_a_backup_under_it(tmp_path: Path) -> None:
    """Files replaced by an older copy (new files, fewer and other records): the long-lived
    index is not trusted for them; the backup is read and appended to as it is."""
    store = asyncart.LocalStore(tmp_path / "store")
    path = tmp_path / "store/log/p/artifacts/a.log"
    await store.log.append("p/artifacts/a", [b"one"], 0)
    backup = {p: p.read_bytes() for p in (path, path.with_suffix(".head"))}
    await store.log.append("p/artifacts/a", [b"a longer second", b"third"], 1)
    assert len(await store.log.read("p/artifacts/a")) == 3
    for name, data in backup.items():  # restored as a tool would: a new file renamed in place
        name.with_suffix(".restored").write_bytes(data)
        os.replace(name.with_suffix(".restored"), name)
    assert await store.log.read("p/artifacts/a") == [b"one"]
    assert await store.log.append("p/artifacts/a", [b"2nd"], 1) == 2
    assert await store.log.read("p/artifacts/a", 1) == [b"2nd"]


async def test_an_append_in_a_new_process_checks_the_last_record(tmp_path: Path) -> None:
    """A new process's first append checks the record before the head (where it writes), not
    the whole history: damage there is refused, naming its seq, and nothing is written."""
    log = asyncart.LocalStore(tmp_path / "store").log
    for seq in range(5):
        await log.append("p/artifacts/a", [f"record {seq}".encode()], seq)
    path = tmp_path / "store/log/p/artifacts/a.log"
    data = bytearray(path.read_bytes())
    data[4 * (12 + 8) + 12 + 2] ^= 0x01  # inside record 4's payload
    path.write_bytes(bytes(data))
    fresh = asyncart.LocalStore(tmp_path / "store").log
    with pytest.raises(asyncart.IntegrityError, match="'p/artifacts/a' seq 4: record checksum"):
        await fresh.append("p/artifacts/a", [b"record 5"], 5)
    assert path.read_bytes() == bytes(data)
    assert await fresh.read("p/artifacts/a", 3, limit=1) == [b"record 3"]  # ranged reads work
