"""Inputs that used to escape as raw Python errors, hang, or commit what cannot be downloaded
(issue 8, items 12-14): each is refused with an AsyncartError that names it, or handled."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from _serving import Server

import asyncart
from asyncart import FileChangedError, InvalidInputError, NotFoundError
from asyncart._backends._wire import TOKEN_ENV

DEADLINE = 20  # seconds: a regression that blocks on a FIFO fails instead of hanging the suite


@pytest.fixture(params=["local", "served"])
def any_store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A local store directory, then the URL of a real server on loopback."""
    if request.param == "local":
        yield str(tmp_path / "store")
        return
    server = Server(tmp_path / "served").start()
    monkeypatch.setenv(TOKEN_ENV, server.token("*", write=True))
    yield server.url
    server.stop()


@contextlib.contextmanager
def _fifo_released(fifo: Path) -> Iterator[None]:
    """A worker thread blocked opening ``fifo`` (the regression) cannot be cancelled, so
    ``fail_after`` alone would wait for it forever: a writer opens the FIFO every few seconds
    to release it, and the test then fails on its deadline instead of hanging."""
    stop = threading.Event()

    def release() -> None:
        while not stop.wait(DEADLINE / 4):
            with contextlib.suppress(OSError):  # ENXIO: nobody is blocked on it
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _run_child(script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter, with a deadline (a child that hangs is killed)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def _nobody() -> Any:
    """The ``pwd`` entry of user ``nobody`` (tests that need it skip without one)."""
    try:
        import pwd

        return pwd.getpwnam("nobody")
    except (ImportError, KeyError):
        pytest.skip("no user 'nobody'")


@contextlib.contextmanager
def _shared_folder(prefix: str) -> Iterator[Path]:
    """A temporary folder that ``nobody`` may enter (pytest's are 0700, root's own), removed
    after."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder)


def _file(path: Path, data: bytes = b"data\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- item 12: names the filesystem cannot hold ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("x" * 256, "256 bytes long, over the 255"),
        ("dir/" + "é" * 128, "256 bytes long, over the 255"),  # 128 characters, 256 bytes
        ("/".join(["d" * 200] * 21), "4220 bytes long, over the 4096"),
    ],
)
async def test_add_file_refuses_names_too_long_for_a_filesystem(tmp_path, name, problem):
    artifact = asyncart.Artifact("ds", "dataset")
    with pytest.raises(InvalidInputError, match=problem):
        await artifact.add_file(_file(tmp_path / "a.txt"), name=name)
    assert len(artifact.manifest) == 0


async def test_longest_names_are_committed_and_downloaded(any_store, tmp_path):
    """A 255-byte segment fits a filesystem, so it must also survive download (whose temporary
    file used to add a suffix to that name: ENAMETOOLONG)."""
    longest = "é" * 127 + "x"  # 255 bytes
    deep = "/".join(["d" * 250] * 15) + "/" + "f" * 100  # 3,865 bytes
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_file(_file(tmp_path / "a.txt", b"one"), name=longest)
    await artifact.add_file(_file(tmp_path / "b.txt", b"two"), name=deep)
    saved = await artifact.save(project="p", store=any_store)
    root = await saved.download(tmp_path / "out")
    assert (root / longest).read_bytes() == b"one"
    assert (root / deep).read_bytes() == b"two"
    await saved.verify(root)


async def test_add_dir_refuses_a_file_name_that_is_not_utf8(tmp_path):
    folder = tmp_path / "dir"
    _file(folder / "good.txt")
    fd = os.open(os.fsencode(folder) + b"/caf\xe9.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    os.close(fd)
    artifact = asyncart.Artifact("ds", "dataset")
    with pytest.raises(InvalidInputError, match=r"b'caf\\xe9.txt': it is not valid UTF-8"):
        await artifact.add_dir(folder)
    assert len(artifact.manifest) == 0  # nothing half-added


async def test_add_dir_refuses_a_too_long_path_inside_it(tmp_path):
    folder = tmp_path / "dir"
    _file(folder / ("n" * 200) / "f.txt")
    artifact = asyncart.Artifact("ds", "dataset")
    with pytest.raises(InvalidInputError, match="over the 255"):
        await artifact.add_dir(folder, name="r" * 256)
    with pytest.raises(InvalidInputError, match=r"'s{120}\.\.\..*/f\.txt': it is 4222 bytes long"):
        await artifact.add_dir(folder, name="/".join(["s" * 250] * 16))  # 4,015 bytes + 207
    assert len(artifact.manifest) == 0
    await artifact.add_dir(folder, name="/".join(["s" * 250] * 15))  # 3,764 + 207: fits
    assert len(artifact.manifest) == 1


async def test_a_path_cannot_be_a_file_and_a_directory(tmp_path):
    src = _file(tmp_path / "a.txt")
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_file(src, name="x")
    with pytest.raises(InvalidInputError, match="'x' is a file there"):
        await artifact.add_file(src, name="x/y")
    with pytest.raises(InvalidInputError, match="'x' is a file there"):
        await artifact.add_dir(_file(tmp_path / "d" / "f").parent, name="x/sub")
    await artifact.add_file(src, name="d/e/f")
    with pytest.raises(InvalidInputError, match="'d/e' to ds: it is already a directory"):
        await artifact.add_file(src, name="d/e")
    with pytest.raises(InvalidInputError, match="'d' to ds: it is already a directory"):
        await artifact.add_file(src, name="d", overwrite=True)
    assert sorted(artifact.manifest.entries) == ["d/e/f", "x"]
    artifact.remove("x")  # once the file is gone, the directory may take its place
    await artifact.add_file(src, name="x/y")
    artifact.remove("d/")
    await artifact.add_file(src, name="d")
    assert sorted(artifact.manifest.entries) == ["d", "x/y"]


async def test_a_new_draft_checks_against_its_parents_entries(store, tmp_path):
    src = _file(tmp_path / "a.txt")
    first = asyncart.Artifact("ds", "dataset")
    await first.add_file(src, name="x")
    await first.add_file(src, name="images/1.png")
    saved = await first.save(project="p", store=store)
    draft = saved.new_draft()
    with pytest.raises(InvalidInputError, match="'x' is a file there"):
        await draft.add_file(src, name="x/y")
    with pytest.raises(InvalidInputError, match="'images' to ds: it is already a directory"):
        await draft.add_file(src, name="images")
    draft.remove("images/")
    await draft.add_file(src, name="images")
    second = await draft.save()
    assert sorted(second.manifest.entries) == ["images", "x"]
    await second.download(tmp_path / "out")


# -- item 13: FIFOs and devices -------------------------------------------------------------


async def test_add_file_refuses_a_fifo_without_blocking(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    artifact = asyncart.Artifact("ds", "dataset")
    with (
        _fifo_released(fifo),
        anyio.fail_after(DEADLINE),
        pytest.raises(InvalidInputError, match=f"cannot add {fifo}: it is a FIFO"),
    ):
        await artifact.add_file(fifo)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
@pytest.mark.allow_blocking
def test_add_file_refuses_a_device_and_a_link_to_it(tmp_path):
    """In a child process: a regression reads /dev/zero forever, in a thread nothing cancels."""
    link = tmp_path / "zero"
    link.symlink_to("/dev/zero")
    done = _run_child(f"""
        import asyncio, asyncart
        async def main():
            for path in ["/dev/zero", {str(link)!r}]:
                try:
                    await asyncart.Artifact("ds", "dataset").add_file(path)
                except asyncart.InvalidInputError as e:
                    print("refused:", e)
        asyncio.run(main())
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"refused: cannot add {path}: it is a device, not a regular file"
        for path in ["/dev/zero", link]
    ]


async def test_add_file_refuses_a_directory(tmp_path):
    artifact = asyncart.Artifact("ds", "dataset")
    with pytest.raises(
        InvalidInputError, match="it is a directory, not a regular file; use add_dir"
    ):
        await artifact.add_file(tmp_path)


async def test_add_dir_skips_fifos_and_devices_and_warns(tmp_path):
    folder = tmp_path / "dir"
    _file(folder / "keep.txt")
    os.mkfifo(folder / "fifo")
    if os.path.exists("/dev/zero"):
        (folder / "zero").symlink_to("/dev/zero")
    artifact = asyncart.Artifact("ds", "dataset")
    with (
        anyio.fail_after(DEADLINE),
        pytest.warns(asyncart.AsyncartWarning, match="skipped") as warned,
    ):
        entries = await artifact.add_dir(folder, name="top")
    assert [e.path for e in entries] == ["top/keep.txt"]
    message = str(warned[0].message)
    assert "'fifo' (a FIFO)" in message
    if os.path.exists("/dev/zero"):
        assert "'zero' (a link to a device)" in message


# -- item 14: raw errors where an AsyncartError belongs ---------------------------------------


async def test_a_source_deleted_after_add_file_is_a_changed_file(any_store, tmp_path):
    src = _file(tmp_path / "a.txt")
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_file(src)
    src.unlink()
    with pytest.raises(FileChangedError, match=f"{src} changed after it was added") as caught:
        await artifact.save(project="p", store=any_store)
    assert "it does not exist" in str(caught.value)


@pytest.mark.parametrize("size", [10, 2 << 20])  # small files are read whole, large ones opened
async def test_a_source_replaced_by_a_directory_or_fifo_is_a_changed_file(
    any_store, tmp_path, size
):
    a, b = _file(tmp_path / "a.bin", b"a" * size), _file(tmp_path / "b.bin", b"b" * size)
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_file(a)
    await artifact.add_file(b)
    a.unlink()
    a.mkdir()
    b.unlink()
    os.mkfifo(b)
    with _fifo_released(b), anyio.fail_after(DEADLINE), pytest.raises(FileChangedError) as caught:
        await artifact.save(project="p", store=any_store)
    message = str(caught.value)
    assert "it is a directory, not a regular file" in message or "it is a FIFO" in message
    assert await asyncart.Api(project="p", store=any_store).artifact_collections() == []


async def test_a_source_under_a_file_is_not_found(tmp_path):
    under = _file(tmp_path / "plain") / "x.txt"
    with pytest.raises(NotFoundError, match="a parent of it is not a directory"):
        await asyncart.Artifact("ds", "dataset").add_file(under)


@pytest.mark.skipif(not hasattr(os, "setuid") or os.geteuid() != 0, reason="needs root")
@pytest.mark.allow_blocking
def test_an_unreadable_source_is_an_invalid_input(tmp_path):
    """Root reads any file, so the check runs in a child that drops to ``nobody``."""
    nobody = _nobody()
    with _shared_folder("asyncart-unreadable-") as folder:
        _file(folder / "readable.txt")
        secret = _file(folder / "secret.txt")
        secret.chmod(0o000)
        done = _run_child(f"""
            import asyncio, os
            import asyncart
            async def main():
                artifact = asyncart.Artifact("ds", "dataset")
                # a first add as root imports what it needs (the interpreter's own files may be
                # closed to nobody), then the process drops to nobody for the real check
                await artifact.add_file({str(folder / "readable.txt")!r})
                os.setgid({nobody.pw_gid}); os.setuid({nobody.pw_uid})
                try:
                    await artifact.add_file({str(secret)!r})
                except asyncart.InvalidInputError as e:
                    print("refused:", e)
            asyncio.run(main())
        """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"refused: cannot read {secret}: permission denied " + (
        "(it is not readable by this user)"
    )


async def test_download_into_an_existing_file_is_refused(store, tmp_path):
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_file(_file(tmp_path / "a.txt"), name="d/a.txt")
    saved = await artifact.save(project="p", store=store)
    occupied = _file(tmp_path / "occupied", b"keep")
    with pytest.raises(InvalidInputError, match=f"cannot download into {occupied}"):
        await saved.download(occupied)
    with pytest.raises(InvalidInputError, match=f"cannot download into {occupied / 'below'}"):
        await saved.download(occupied / "below")
    root = tmp_path / "root"
    _file(root / "d", b"a file where a directory goes")
    with pytest.raises(InvalidInputError, match="cannot download 'd/a.txt' under"):
        await saved.download(root)
    assert occupied.read_bytes() == b"keep"


@pytest.mark.skipif(not hasattr(os, "setuid") or os.geteuid() != 0, reason="needs root")
@pytest.mark.allow_blocking
def test_a_download_root_that_cannot_be_written_is_an_invalid_input(tmp_path):
    """As ``nobody``, into a directory that root owns (root itself writes anywhere)."""
    nobody = _nobody()
    with _shared_folder("asyncart-unwritable-") as folder:
        _file(folder / "a.txt")
        (folder / "out" / "d").mkdir(parents=True)  # exists, so only the file write fails
        done = _run_child(f"""
            import asyncio, os
            import asyncart
            async def main():
                artifact = asyncart.Artifact("ds", "dataset")
                await artifact.add_file({str(folder / "a.txt")!r}, name="d/a.txt")
                saved = await artifact.save(project="p", store={str(folder / "store")!r})
                await saved.download({str(folder / "warm-up")!r})  # imports, as root
                os.setgid({nobody.pw_gid}); os.setuid({nobody.pw_uid})
                try:
                    await saved.download({str(folder / "out")!r})
                except asyncart.InvalidInputError as e:
                    print("refused:", e)
            asyncio.run(main())
        """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"refused: cannot download into {folder / 'out'}: writing ")
    assert "Permission denied; choose a root this user can write" in done.stdout


async def test_download_makes_no_directory_outside_its_root(store, tmp_path):
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_file(_file(tmp_path / "a.txt"), name="link/sub/deeper/a.txt")
    saved = await artifact.save(project="p", store=store)
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(InvalidInputError, match="leads outside"):
        await saved.download(root)
    assert list(outside.iterdir()) == []


async def test_verify_reports_a_directory_in_place_of_a_file(store, tmp_path):
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_file(_file(tmp_path / "a.txt"))
    saved = await artifact.save(project="p", store=store)
    root = await saved.download(tmp_path / "out")
    (root / "a.txt").unlink()
    (root / "a.txt").mkdir()
    with pytest.raises(asyncart.IntegrityError, match="unreadable a.txt"):
        await saved.verify(root)


async def test_a_huge_version_number_is_an_invalid_reference(store):
    await asyncart.LocalStore(store).create()
    api = asyncart.Api(project="p", store=store)
    with pytest.raises(InvalidInputError, match="at most 18 digits"):
        await api.artifact("b:v" + "9" * 5000)


async def test_remove_takes_a_path_like_or_an_entry(tmp_path, files):
    artifact = asyncart.Artifact("ds", "dataset")
    entries = await artifact.add_dir(files)
    artifact.remove(Path("a.txt"))
    artifact.remove(Path("images"))  # a directory, as os.fspath gives it: no trailing '/'
    [deep] = [e for e in entries if e.path == "nested/deep/x.bin"]
    artifact.remove(deep)
    assert sorted(artifact.manifest.entries) == ["b.txt"]
    with pytest.raises(InvalidInputError, match="must be a non-empty str"):
        artifact.remove(b"b.txt")  # type: ignore[arg-type]


async def test_empty_names_are_refused_not_replaced_by_defaults(store, tmp_path):
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_file(_file(tmp_path / "a.txt"))
    with pytest.raises(InvalidInputError, match="invalid project ''"):
        await artifact.save(project="", store=store)
    for kwargs, what in [
        ({"project": ""}, "project"),
        ({"id": ""}, "run id"),
        ({"group": ""}, "group"),
    ]:
        with pytest.raises(InvalidInputError, match=f"invalid {what} ''"):
            asyncart.init(store=store, **kwargs)
    with pytest.raises(InvalidInputError, match="invalid project ''"):
        asyncart.Api(project="", store=store)
    async with asyncart.init(project="p", group="g", store=store) as run:
        with pytest.raises(InvalidInputError, match="invalid distributed_id ''"):
            await run.upsert_artifact(asyncart.Artifact("ds", "dataset"), distributed_id="")
    assert await asyncart.Api(project="uncategorized", store=store).projects() == ["p"]
