"""A folder's append mark (``_marks``): a reader that finds it unchanged checks no head.

Every test compares ``notes()`` with the notes read from the heads themselves. The appenders
that die or stall are real processes (``sys.executable -c``), killed before each syscall of
an append in turn, or stopped between announcing themselves and writing their head.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from _processes import wait_stopped
from _spies import Calls
from test_notes_cache import FOLDER, PREFIX, from_heads, head_opens, make_log, read_cache

from asyncart._backends import _marks, local_log
from asyncart._backends.local_log import LocalEventLog

MARK = f".{FOLDER.rpartition('/')[2]}.mark"


@contextlib.contextmanager
def later(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Reads within it act as if well after every file's last change (their builds trust
    every ctime they find; the mark needs no such margin)."""
    ahead = time.time_ns() + 10 * local_log._RACY_NS
    with monkeypatch.context() as patch:
        patch.setattr(local_log.time, "time_ns", lambda: ahead)
        yield


async def build_trusted(log: LocalEventLog, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new cache of FOLDER that trusts its listing and records the mark."""
    (log.root / "p" / ".artifacts.notes").unlink(missing_ok=True)
    with later(monkeypatch):
        await log.notes(PREFIX)
    mark = await anyio.to_thread.run_sync(_marks.mark_key, str(log.root / "p" / MARK))
    assert await cached_mark(log) == mark


async def cached_mark(log: LocalEventLog) -> object:
    """The mark key that FOLDER's cache recorded (None: no cache that can be used)."""
    cache: Any = await anyio.to_thread.run_sync(read_cache, log)
    return None if cache is None else cache.mark


def head_checks(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """Counts the folders whose heads were stat'ed one by one (``_check_heads``)."""
    return Calls(monkeypatch, local_log, "_check_heads")


async def test_an_unchanged_folder_stats_no_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = await make_log(tmp_path, [f"a{i}" for i in range(100)])
    await build_trusted(log, monkeypatch)
    checks = head_checks(monkeypatch)
    for _ in range(2):
        with later(monkeypatch):
            notes = await log.notes(PREFIX)
        assert checks.reset() == 0
        assert notes == await from_heads(log) and len(notes) == 100
    await log.append(f"{PREFIX}a7", [b"r1"], 1, note=b"note of a7 1")
    for expected_checks in (1, 0):  # the one that sees the new mark rewrites the cache
        with later(monkeypatch):
            notes = await log.notes(PREFIX)
        assert checks.reset() == expected_checks
        assert notes[f"{PREFIX}a7"] == b"note of a7 1" and notes == await from_heads(log)


async def test_each_append_adds_one_byte_to_the_mark_beside_its_folder(tmp_path: Path) -> None:
    log = await make_log(tmp_path, ["a", "b"])
    mark = await anyio.to_thread.run_sync(_marks.mark_key, str(log.root / "p" / MARK))
    assert mark[2] == 2
    await log.append(f"{PREFIX}a", [b"r1", b"r2"], 1, note=b"x")
    after = await anyio.to_thread.run_sync(_marks.mark_key, str(log.root / "p" / MARK))
    assert after[:2] == mark[:2] and after[2] == 3
    assert not [p for p in os.listdir(log.root / FOLDER) if p.startswith(".")]


async def test_every_change_after_a_build_is_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [f"a{i}" for i in range(30)]
    log = await make_log(tmp_path, names)
    seqs = dict.fromkeys(names, 1)
    for i in range(40):
        await build_trusted(log, monkeypatch)
        name = names[(i * 7) % len(names)]
        await log.append(f"{PREFIX}{name}", [b"r"], seqs[name], note=f"{name} {i}".encode())
        seqs[name] += 1
        with later(monkeypatch):
            notes = await log.notes(PREFIX)
        assert notes[f"{PREFIX}{name}"] == f"{name} {i}".encode()
        assert notes == await from_heads(log)


async def test_a_missing_mark_costs_only_the_per_head_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = await make_log(tmp_path, [f"a{i}" for i in range(10)])
    await build_trusted(log, monkeypatch)
    await anyio.to_thread.run_sync(os.unlink, log.root / "p" / MARK)
    checks = head_checks(monkeypatch)
    with later(monkeypatch):
        assert await log.notes(PREFIX) == await from_heads(log)
    assert checks.reset() == 1
    await log.append(f"{PREFIX}a1", [b"r1"], 1, note=b"after")  # makes a new mark
    with later(monkeypatch):
        notes = await log.notes(PREFIX)
    assert notes[f"{PREFIX}a1"] == b"after" and notes == await from_heads(log)


async def test_a_cache_of_another_boot_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power cut may keep a head's synced bytes and lose its ctime and the mark's byte:
    a cache built before a reboot vouches for nothing, and every head is read."""
    log = await make_log(tmp_path, [f"a{i}" for i in range(10)])
    await build_trusted(log, monkeypatch)
    opens = head_opens(monkeypatch)
    monkeypatch.setattr(local_log, "boot_id", lambda: "another boot")
    with later(monkeypatch):
        assert await log.notes(PREFIX) == await from_heads(log)
    assert opens.reset() == 10 + 10  # every head by notes(), then by from_heads


# -- real appenders, killed before each syscall in turn, or stopped -------------------------

APPENDER = r"""
import fcntl, os, signal, sys
from pathlib import Path
from asyncart._backends import local_log

root, stream, how, note = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].encode()
log = local_log.LocalEventLog(Path(root))
seq = len(log._read(stream, 0, None))
calls = 0
if how.startswith("many:"):  # appends to one stream after another, as fast as it can
    first = int(how[5:])
    for i in range(first, first + 40):
        stream = stream.rpartition("/")[0] + f"/a{i % 20}"
        while True:
            try:
                seq = len(log._read(stream, 0, None))
                log._append(stream, [b"record"], seq, f"{note} {i}".encode())
                break
            except local_log.ConflictError:  # the other appender got there first
                continue
    sys.exit(0)
elif how == "stop-after-mark":  # announced (mark locked, its byte added), no head written yet
    real_announce = local_log.announce

    def announce(path):
        fd = real_announce(path)
        os.kill(os.getpid(), signal.SIGSTOP)
        return fd

    local_log.announce = announce
else:  # killed before its syscall number int(how) (from 0) of the append
    at = int(how)

    def gated(module, name):
        real = getattr(module, name)

        def call(*args, **kwargs):
            global calls
            if calls == at:
                os.kill(os.getpid(), signal.SIGKILL)
            calls += 1
            return real(*args, **kwargs)

        setattr(module, name, call)

    for name in (
        "open", "close", "read", "write", "pread", "pwrite", "pwritev", "fdatasync", "fsync",
        "ftruncate", "replace", "rename", "link", "unlink", "mkdir", "stat", "fstat", "lstat",
    ):
        gated(os, name)
    gated(fcntl, "fcntl")
    gated(fcntl, "flock")
log._append(stream, [b"record"], seq, note)
print(calls)
"""


def appender(log: LocalEventLog, stream: str, how: str, note: str) -> list[str]:
    return [sys.executable, "-c", APPENDER, str(log.root), stream, how, note]


@pytest.mark.parametrize("name", ["a7", "new"])  # a stream's next append, or its first
async def test_an_appender_killed_between_any_two_syscalls_hides_no_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    log = await make_log(tmp_path, [f"a{i}" for i in range(20)])
    stream = f"{PREFIX}{name}"
    for at in itertools.count():
        await build_trusted(log, monkeypatch)  # records the mark: a reader would skip heads
        with anyio.fail_after(60):
            done = await anyio.run_process(appender(log, stream, str(at), f"n{at}"), check=False)
        for _ in range(2):  # the reader that checks, then the one that trusts its cache
            with later(monkeypatch):
                notes = await log.notes(PREFIX)
            assert notes == await from_heads(log), f"killed before syscall {at}"
        if done.returncode == 0:
            break
        assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    assert at == int(done.stdout) > 10  # every syscall of the append was a place to die
    assert notes[stream] == f"n{at}".encode()


async def test_a_build_during_a_stalled_append_records_no_mark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An appender stopped after its byte and before its head write holds its lock: a build
    meanwhile finds the lock and vouches for no mark, so the head it writes later is seen."""
    log = await make_log(tmp_path, [f"a{i}" for i in range(20)])
    stream = f"{PREFIX}a3"
    writer = await anyio.open_process(appender(log, stream, "stop-after-mark", "late"))
    async with writer:
        try:
            await wait_stopped(writer.pid)
            (log.root / "p" / ".artifacts.notes").unlink(missing_ok=True)
            with later(monkeypatch):
                notes = await log.notes(PREFIX)
            assert notes[stream] == b"note of a3 0"  # still the head's current note
            assert await cached_mark(log) == _marks.NO_MARK
        finally:
            writer.send_signal(signal.SIGCONT)
        assert await writer.wait() == 0
    checks = head_checks(monkeypatch)
    with later(monkeypatch):
        notes = await log.notes(PREFIX)
    assert notes[stream] == b"late" and notes == await from_heads(log)
    assert checks.reset() == 1


async def test_a_stalled_appender_killed_hides_no_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed while stopped after its byte: its lock is gone, its byte stays; a build then
    records the mark, and the next append (which rolls nothing forward: no record was
    written) is seen."""
    log = await make_log(tmp_path, [f"a{i}" for i in range(5)])
    stream = f"{PREFIX}a3"
    writer = await anyio.open_process(appender(log, stream, "stop-after-mark", "never"))
    async with writer:
        await wait_stopped(writer.pid)
        writer.kill()
        await writer.wait()
    await build_trusted(log, monkeypatch)
    with later(monkeypatch):
        assert (await log.notes(PREFIX))[stream] == b"note of a3 0"
    await log.append(stream, [b"r1"], 1, note=b"next")
    with later(monkeypatch):
        notes = await log.notes(PREFIX)
    assert notes[stream] == b"next" and notes == await from_heads(log)


async def test_caches_built_during_appenders_hide_none_of_their_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two real appenders write heads in one folder while readers build and rewrite its
    cache again and again (real time: a head's ctime protects only the per-head check).
    Once they are done, the cache must not vouch for any note but the heads' own."""
    log = await make_log(tmp_path, [f"a{i}" for i in range(20)])
    await anyio.sleep(2.5)  # the folder's listing is then old enough to be trusted
    checks = head_checks(monkeypatch)
    with anyio.fail_after(120):
        writers = [
            await anyio.open_process(appender(log, f"{PREFIX}a0", f"many:{first}", "w"))
            for first in (0, 1000)
        ]
        while any(writer.returncode is None for writer in writers):
            assert len(await log.notes(PREFIX)) == 20
        for writer in writers:
            assert await writer.wait() == 0
    for _ in range(2):
        notes = await log.notes(PREFIX)
        assert notes == await from_heads(log)
    assert checks.reset() >= 2  # the readers during the appends checked the heads
