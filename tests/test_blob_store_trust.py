"""The local blob store does not trust what it cannot check cheaply: a stored blob of the wrong
size is missing (and kept aside as evidence), a blob is never replaced once stored, and a
failed durability call fails the commit instead of letting it reference blobs that may not be
on disk."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import blake3
import pytest

import asyncart
from asyncart._backends import local_blobs
from asyncart._backends.base import UploadItem
from asyncart._errors import NotDurableError

NOBODY = 65534


def _blob(store: str, digest: str) -> Path:
    return Path(store) / "blobs" / digest[:2] / digest


def _damaged(store: str) -> list[Path]:
    where = Path(store) / "blobs" / "damaged"
    return sorted(where.iterdir()) if where.exists() else []


# -- item 3: sizes -------------------------------------------------------------------------


@pytest.mark.parametrize("left", [0, 3], ids=["empty", "short"])
async def test_a_short_blob_is_missing_and_the_next_log_of_that_content_repairs_it(
    store: str, tmp_path: Path, left: int
) -> None:
    """A power cut after the rename can leave an empty or short file under the blob's name:
    dedup must not count it as present (every later commit would point at bad bytes)."""
    data = b"precious bytes, stored once" * 100
    (tmp_path / "a.bin").write_bytes(data)
    first = asyncart.Artifact("first", "dataset")
    entry = await first.add_file(tmp_path / "a.bin")
    await first.save(project="demo", store=store)
    blob = _blob(store, entry.digest)
    with open(blob, "r+b") as f:  # what the power cut left
        f.truncate(left)

    second = asyncart.Artifact("second", "dataset")
    await second.add_file(tmp_path / "a.bin")
    await second.save(project="demo", store=store)

    assert blob.read_bytes() == data, "the upload stored a good copy"
    [aside] = _damaged(store)
    assert aside.name.startswith(entry.digest) and aside.read_bytes() == data[:left]
    api = asyncart.Api("demo", store=store)
    for name in ("first", "second"):  # the earlier version reads again too
        out = await (await api.artifact(name)).download(tmp_path / name)
        assert (out / "a.bin").read_bytes() == data
    assert (await asyncart.audit("demo", store=store, read_data=True)).ok


async def test_put_bytes_does_not_trust_a_short_blob(store: str) -> None:
    blobs = asyncart.LocalStore(store).blobs
    digest = await blobs.put_bytes(b"a snapshot of a manifest")
    _blob(store, digest).write_bytes(b"a snap")
    assert await blobs.put_bytes(b"a snapshot of a manifest") == digest
    assert await blobs.get_bytes(digest) == b"a snapshot of a manifest"
    assert len(_damaged(store)) == 1


async def test_a_wrong_size_claimed_for_a_good_blob_leaves_it_in_place(store: str) -> None:
    """The caller's size can be wrong (a client of a server): a stored file that hashes to its
    digest is good, and nobody may take it away from everyone else."""
    blobs = asyncart.LocalStore(store).blobs
    digest = await blobs.put_bytes(b"good bytes")
    assert await blobs.missing({digest: 3}) == set()
    assert await blobs.missing({digest: 10}) == set()
    assert _blob(store, digest).read_bytes() == b"good bytes" and _damaged(store) == []


async def test_a_stored_blob_is_never_replaced(store: str, tmp_path: Path) -> None:
    """Not even by the same bytes: a hard link that fails when the name exists, not a rename
    over it (whoever wrote the replacement could still hold it open)."""
    source = tmp_path / "f"
    source.write_bytes(b"x" * 5000)
    item = UploadItem(str(source), blake3.blake3(source.read_bytes()).hexdigest(), 5000)
    blobs = asyncart.LocalStore(store).blobs
    await blobs.put_files([item])
    before = os.stat(_blob(store, item.digest)).st_ino
    await blobs.put_files([item])
    await blobs.put_bytes(source.read_bytes())
    assert os.stat(_blob(store, item.digest)).st_ino == before
    assert sorted(p.name for p in _blob(store, item.digest).parent.iterdir()) == [item.digest]


async def test_plain_audit_checks_sizes_and_read_data_checks_bytes(
    store: str, tmp_path: Path
) -> None:
    (tmp_path / "short.bin").write_bytes(b"s" * 1000)
    (tmp_path / "flipped.bin").write_bytes(b"f" * 1000)
    artifact = asyncart.Artifact("ds", "dataset")
    short = await artifact.add_file(tmp_path / "short.bin")
    flipped = await artifact.add_file(tmp_path / "flipped.bin")
    await artifact.save(project="demo", store=store)
    _blob(store, short.digest).write_bytes(b"s" * 10)
    _blob(store, flipped.digest).write_bytes(b"F" + b"f" * 999)  # same size, other bytes

    plain = await asyncart.audit("demo", store=store)
    [problem] = plain.problems
    assert f"blob {short.digest} of ds:v0/short.bin is missing or damaged" in problem.message
    assert "not 1000 bytes" in problem.message

    deep = await asyncart.audit("demo", store=store, read_data=True)
    assert [p.message for p in deep.problems if flipped.digest in p.message]
    assert "is corrupt" in " ".join(p.message for p in deep.problems)


# -- item 2: a failed durability call fails the commit --------------------------------------


@pytest.fixture
def unsyncable(monkeypatch: pytest.MonkeyPatch) -> None:
    """``syncfs`` fails for real: the libc call is made on a descriptor that is not open (the
    kernel answers EBADF), the one failure a test can cause without a failing disk."""
    libc = ctypes.CDLL(None, use_errno=True)
    monkeypatch.setattr(local_blobs, "_syncfs", lambda fd: libc.syncfs(-1))


def _head(store: str, stream: str = "demo/artifacts/ds") -> int:
    return len(anyio.run(asyncart.LocalStore(store).log.read, stream))


async def test_a_failed_syncfs_fails_the_commit_and_appends_nothing(
    store: str, tmp_path: Path, unsyncable: None
) -> None:
    (tmp_path / "a.bin").write_bytes(b"a" * 100)
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_file(tmp_path / "a.bin")
    with pytest.raises(NotDurableError, match=r"blobs in .*/blobs could not be made durable"):
        await artifact.save(project="demo", store=store)
    assert await asyncart.LocalStore(store).log.read("demo/artifacts/ds") == []
    with pytest.raises(asyncart.NotFoundError):
        await asyncart.Api("demo", store=store).artifact("ds")


def _commit_with_an_unopenable_blobs_dir(store: str, files: str) -> tuple[int, str]:
    """In a child process, as a user without root's override of permissions: log v0, make the
    blobs directory writable but not readable (blobs can still be stored, the directory cannot
    be opened for ``syncfs``), then try to log v1. Returns the stream's length after v0 and
    the error v1 raised."""
    if os.getuid() == 0:
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    blobs = Path(store) / "blobs"

    async def scenario() -> tuple[int, str]:
        v0 = asyncart.Artifact("ds", "dataset")
        await v0.add_file(Path(files) / "a.bin")
        await v0.save(project="demo", store=store)
        head = len(await asyncart.LocalStore(store).log.read("demo/artifacts/ds"))
        blobs.chmod(0o300)
        try:
            v1 = asyncart.Artifact("ds", "dataset")
            await v1.add_file(Path(files) / "b.bin")
            await v1.save(project="demo", store=store)
        except asyncart.AsyncartError as e:
            return head, f"{type(e).__name__}: {e}"
        finally:
            blobs.chmod(0o755)
        return head, "committed"

    return anyio.run(scenario)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the unprivileged child can reach (pytest's tmp_path is root's alone)."""
    where = Path(tempfile.mkdtemp(prefix="asyncart-durable-"))
    where.chmod(0o755)
    try:
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_a_blobs_dir_that_cannot_be_synced_fails_the_commit(shared_dir: Path) -> None:
    store, files = shared_dir / "store", shared_dir / "files"
    files.mkdir()
    (files / "a.bin").write_bytes(b"a" * 100)
    (files / "b.bin").write_bytes(b"b" * 100)
    if os.getuid() == 0:
        for path in (shared_dir, files, files / "a.bin", files / "b.bin"):
            os.chown(path, NOBODY, NOBODY)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        head, outcome = pool.apply(_commit_with_an_unopenable_blobs_dir, (str(store), str(files)))
    assert outcome.startswith("NotDurableError: the blobs in ")
    assert f"{store}/blobs could not be made durable (Permission denied)" in outcome
    assert _head(str(store)) == head, "v0's records only: v1 appended nothing"


async def test_without_syncfs_each_new_or_found_blob_and_its_directory_is_fsynced(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where there is no ``syncfs`` (not Linux), ``flush`` fsyncs the blobs written or found
    present since the last flush (found: another process may have died before its sync)."""
    monkeypatch.setattr(local_blobs, "_syncfs", None)
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(local_blobs.os, "fsync", fsync)
    (tmp_path / "a.bin").write_bytes(b"a" * 100)
    artifact = asyncart.Artifact("ds", "dataset")
    entry = await artifact.add_file(tmp_path / "a.bin")
    await artifact.save(project="demo", store=store)
    blob = str(_blob(store, entry.digest))
    assert blob in synced and os.path.dirname(blob) in synced

    synced.clear()
    again = asyncart.Artifact("again", "dataset")  # the same content: found, not written
    await again.add_file(tmp_path / "a.bin")
    await again.save(project="demo", store=store)
    assert blob in synced and os.path.dirname(blob) in synced
