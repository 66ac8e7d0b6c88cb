"""The local log's notes cache (``log/FOLDER/.notes``): derived, checked before each use.

Every test compares ``notes()`` with the notes read from the heads themselves, and counts
the head files opened to tell the fast path (none) from the slow one (every head).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from _spies import Calls

from asyncart import LocalStore
from asyncart._backends import local_log
from asyncart._backends.local_log import LocalEventLog

FOLDER = "p/artifacts"
PREFIX = f"{FOLDER}/"


def head_opens(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """Counts the head files opened (``os.open`` of ``*.head``) while installed."""
    return Calls(monkeypatch, os, "open", lambda path: str(path).endswith(".head"))


def folder_listings(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """Counts the folders listed (``os.scandir``) while installed."""
    return Calls(monkeypatch, os, "scandir")


async def make_log(root: Path, names: list[str]) -> LocalEventLog:
    log = LocalStore(root / "store").log
    assert isinstance(log, LocalEventLog)
    for name in names:
        await log.append(f"{PREFIX}{name}", [b"r0"], 0, note=f"note of {name} 0".encode())
    return log


async def from_heads(log: LocalEventLog, prefix: str = PREFIX) -> dict[str, bytes]:
    """The notes as read from every head, without the cache."""

    def read() -> dict[str, bytes]:
        return {stream: log._note(stream) for stream in log._streams(prefix)}

    return await anyio.to_thread.run_sync(read)


def cache_file(log: LocalEventLog, folder: str = FOLDER) -> Path:
    """Where the cache of ``folder`` lives: beside it, in the folder above."""
    path = log.root / folder
    return path.parent / f".{path.name}.notes"


def read_cache(log: LocalEventLog) -> object:
    """The cache of FOLDER as its readers see it (None: none that can be used)."""
    return local_log._read_notes_cache(str(cache_file(log)), FOLDER)


async def build_trusted(log: LocalEventLog, monkeypatch: pytest.MonkeyPatch) -> None:
    """Build the cache as if it had started well after every head's last write (the heads
    were just written: a cache built now would trust none of them, rightly)."""
    cache_file(log).unlink(missing_ok=True)
    later = time.time_ns() + 10 * local_log._RACY_NS
    with monkeypatch.context() as patch:
        patch.setattr(local_log.time, "time_ns", lambda: later)
        await log.notes(PREFIX)
    assert cache_file(log).exists()
    await anyio.sleep(0.05)  # later writes fall in another timestamp tick


async def test_unchanged_heads_are_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = await make_log(tmp_path, [f"a{i}" for i in range(100)])
    await build_trusted(log, monkeypatch)
    opens = head_opens(monkeypatch)
    for _ in range(2):
        notes = await log.notes(PREFIX)
        assert opens.reset() == 0
        assert notes == await from_heads(log) and len(notes) == 100
        assert opens.reset() == 100  # from_heads reads every head


async def test_appends_new_and_removed_streams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = await make_log(tmp_path, ["a", "b", "c", "d"])
    await build_trusted(log, monkeypatch)
    await log.append(f"{PREFIX}a", [b"r1"], 1, note=b"note of a 1")
    await log.append(f"{PREFIX}e", [b"r0"], 0, note=b"note of e 0")
    for suffix in ("log", "head", "idx"):
        (log.root / FOLDER / f"c.{suffix}").unlink(missing_ok=True)
    opens = head_opens(monkeypatch)
    notes = await log.notes(PREFIX)
    assert opens.reset() == 2  # the changed head and the new one
    assert notes == await from_heads(log)
    assert notes[f"{PREFIX}a"] == b"note of a 1"
    assert f"{PREFIX}c" not in notes and notes[f"{PREFIX}e"] == b"note of e 0"


async def test_a_head_written_just_after_the_build_is_never_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The racy case: a head written in the same timestamp tick as the stat the cache holds
    can keep its ctime; the cache does not trust a ctime that close to its build."""
    log = await make_log(tmp_path, ["a", "b"])
    for seq in range(1, 20):
        await log.notes(PREFIX)  # the cache, built right now
        await log.append(f"{PREFIX}a", [b"r"], seq, note=f"note of a {seq}".encode())
        assert (await log.notes(PREFIX))[f"{PREFIX}a"] == f"note of a {seq}".encode()
    assert await log.notes(PREFIX) == await from_heads(log)


async def test_a_cache_built_in_the_future_still_sees_new_ctimes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even a build time set far ahead (a stepped clock) trusts only heads whose inode, size
    and ctime are those recorded: a head rewritten in a later tick is read."""
    log = await make_log(tmp_path, ["a", "b"])
    await build_trusted(log, monkeypatch)
    await log.append(f"{PREFIX}b", [b"r1"], 1, note=b"note of b 1")
    assert await log.notes(PREFIX) == await from_heads(log)
    assert (await log.notes(PREFIX))[f"{PREFIX}b"] == b"note of b 1"


def damaged(data: bytes, how: str) -> bytes:
    if how == "truncated":
        return data[: len(data) // 2]
    if how == "empty":
        return b""
    if how == "garbage":
        return os.urandom(len(data))
    if how == "flipped":  # one bit of the body: the checksum no longer holds
        at = len(data) - 5
        return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "flipped"])
async def test_a_damaged_cache_costs_only_the_slow_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    log = await make_log(tmp_path, [f"a{i}" for i in range(10)])
    await build_trusted(log, monkeypatch)
    path = cache_file(log)
    path.write_bytes(damaged(path.read_bytes(), how))
    opens = head_opens(monkeypatch)
    assert await log.notes(PREFIX) == await from_heads(log)
    assert opens.reset() == 10 + 10  # every head by notes(), then by from_heads
    assert await anyio.to_thread.run_sync(read_cache, log) is not None  # rewritten


async def test_another_folders_cache_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache copied from another folder (with the same stream names, and notes that are not
    these streams') is refused: it names its folder."""
    log = await make_log(tmp_path, ["a", "b"])
    for name in ("a", "b"):
        await log.append(f"q/artifacts/{name}", [b"r0"], 0, note=b"q's note")
    await log.notes("q/artifacts/")
    mine = cache_file(log)
    mine.write_bytes(cache_file(log, "q/artifacts").read_bytes())
    opens = head_opens(monkeypatch)
    notes = await log.notes(PREFIX)
    assert opens.reset() == 2
    assert notes == await from_heads(log) and b"q's note" not in notes.values()


async def test_a_replaced_head_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A head replaced by another file (a restore: new inode, same size) is read again."""
    log = await make_log(tmp_path, ["a", "b"])
    other = await make_log(tmp_path / "other", ["a"])
    await other.append(f"{PREFIX}a", [b"r1"], 1, note=b"restored")
    await build_trusted(log, monkeypatch)
    for suffix in ("log", "head"):
        data = (other.root / FOLDER / f"a.{suffix}").read_bytes()
        tmp = log.root / FOLDER / f".a.{suffix}.restore"
        tmp.write_bytes(data)
        os.replace(tmp, log.root / FOLDER / f"a.{suffix}")
    assert (await log.notes(PREFIX))[f"{PREFIX}a"] == b"restored"
    assert await log.notes(PREFIX) == await from_heads(log)


async def test_a_folder_that_cannot_be_written_still_lists_right(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = await make_log(tmp_path, ["a", "b", "c"])
    folder = log.root / FOLDER
    real = os.open

    def read_only(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT:  # as a read-only mount answers (root ignores a folder's mode)
            raise PermissionError(13, "Read-only file system", str(path))
        return real(path, flags, *args, **kwargs)

    folder.chmod(0o555)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(os, "open", read_only)
            assert await log.notes(PREFIX) == await from_heads(log)
            assert await log.notes(PREFIX) == await from_heads(log)
        assert not cache_file(log).exists()
        assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []
    finally:
        folder.chmod(0o755)


async def test_the_cache_is_never_a_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = await make_log(tmp_path, ["notes", "a"])
    await log.append("p/runs/r", [b"r0"], 0, note=b"run")
    await log.notes("p/")  # a cache in each folder
    assert cache_file(log).exists() and cache_file(log, "p/runs").exists()
    assert await log.streams("p/") == [f"{PREFIX}a", f"{PREFIX}notes", "p/runs/r"]
    assert await log.streams("") == [f"{PREFIX}a", f"{PREFIX}notes", "p/runs/r"]
    assert await log.notes("p/") == await from_heads(log, "p/")
    assert await log.notes(f"{PREFIX}n") == {f"{PREFIX}notes": b"note of notes 0"}


async def test_a_narrower_prefix_keeps_the_other_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = await make_log(tmp_path, [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)])
    await build_trusted(log, monkeypatch)
    await log.append(f"{PREFIX}a0", [b"r1"], 1, note=b"note of a0 1")
    for i in range(5, 80):  # enough new streams under "b" for the cache to be rewritten
        await log.append(f"{PREFIX}b{i}", [b"r0"], 0, note=b"new")
    assert await log.notes(f"{PREFIX}b") == await from_heads(log, f"{PREFIX}b")
    assert await log.notes(PREFIX) == await from_heads(log)


async def test_an_unchanged_folder_is_not_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache holds the folder's listing too, trusted while the folder's ctime is the one
    recorded (and older than the build by the margin): no name was created or removed."""
    log = await make_log(tmp_path, [f"a{i}" for i in range(100)])
    await build_trusted(log, monkeypatch)
    listings, opens = folder_listings(monkeypatch), head_opens(monkeypatch)
    for _ in range(2):
        notes = await log.notes(PREFIX)
        assert (listings.reset(), opens.reset()) == (0, 0)
        assert notes == await from_heads(log) and len(notes) == 100
        assert (listings.reset(), opens.reset()) == (1, 100)  # from_heads lists, reads all
    await log.append(f"{PREFIX}a7", [b"r1"], 1, note=b"note of a7 1")  # in place: no new name
    opens.reset()
    notes = await log.notes(PREFIX)
    assert (listings.reset(), opens.reset()) == (0, 1)
    assert notes[f"{PREFIX}a7"] == b"note of a7 1"


async def test_a_name_created_or_removed_makes_the_folder_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = await make_log(tmp_path, [f"a{i}" for i in range(100)])
    await build_trusted(log, monkeypatch)
    listings = folder_listings(monkeypatch)
    await log.append(f"{PREFIX}new", [b"r0"], 0, note=b"note of new 0")
    assert (await log.notes(PREFIX))[f"{PREFIX}new"] == b"note of new 0"
    assert listings.reset() == 1
    await build_trusted(log, monkeypatch)
    listings.reset()
    for suffix in ("log", "head", "idx"):
        (log.root / FOLDER / f"a3.{suffix}").unlink()
    notes = await log.notes(PREFIX)
    assert listings.reset() == 1
    assert f"{PREFIX}a3" not in notes and notes == await from_heads(log)


async def test_a_name_created_just_after_the_build_is_never_missed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The racy case for the listing: a name created within a timestamp tick of the
    folder's recorded ctime may keep it; a listing that recent is not trusted."""
    log = await make_log(tmp_path, [f"a{i}" for i in range(100)])
    for i in range(20):
        await log.notes(PREFIX)  # the cache, built right now
        await log.append(f"{PREFIX}b{i}", [b"r0"], 0, note=f"note of b{i}".encode())
        assert (await log.notes(PREFIX))[f"{PREFIX}b{i}"] == f"note of b{i}".encode()
    assert await log.notes(PREFIX) == await from_heads(log)


async def test_writing_the_cache_leaves_its_folder_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache lives beside its folder, not in it: writing it would change the folder's
    ctime, and no listing could then be trusted."""
    log = await make_log(tmp_path, [f"a{i}" for i in range(100)])
    folder = log.root / FOLDER
    before = folder.stat().st_ctime_ns
    await build_trusted(log, monkeypatch)
    assert folder.stat().st_ctime_ns == before
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []
    listings = folder_listings(monkeypatch)
    assert await log.notes(PREFIX) == await from_heads(log)
    assert listings.reset() == 1  # from_heads lists the folder; notes() did not


async def test_a_replaced_folder_is_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder restored from a copy (another inode) is listed, whatever its ctime."""
    log = await make_log(tmp_path, [f"a{i}" for i in range(100)])
    await build_trusted(log, monkeypatch)
    folder = log.root / FOLDER
    copy = folder.with_name("artifacts-copy")
    copy.mkdir()
    for path in folder.iterdir():
        if path.name != "a5.head" and not path.name.startswith("a5."):
            (copy / path.name).write_bytes(path.read_bytes())
    os.rename(folder, folder.with_name("artifacts-old"))
    os.rename(copy, folder)
    notes = await log.notes(PREFIX)
    assert f"{PREFIX}a5" not in notes and notes == await from_heads(log)
