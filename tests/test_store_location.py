"""Store locations that are not stores, stores that cannot be written, and ``serve`` errors.

Readers (the API's reads, ``audit``, and every command that only reads) need a store to be at
the location: they say so, naming it, and create nothing. Only writers (``save``, ``init``,
``serve``, ``token create``) make a store. An empty location or a URL of another scheme is bad
input; a file where the store directory should be is a clear error.

The unwritable store is real, not simulated: the tests run as root, which permissions do not
stop, so they use a directory under /sys (the kernel refuses to create it, even for root) and a
forked child that drops to the unprivileged user ``nobody`` with ``os.setuid``.
"""

from __future__ import annotations

import asyncio
import io
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import asyncart
from asyncart._cli import main

ASYNCART = shutil.which("asyncart", path=str(Path(sys.executable).parent))
NOBODY = 65534


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``asyncart``, run in ``cwd`` with no store in the environment."""
    assert ASYNCART, "the asyncart console script is not installed (pip install -e .)"
    env = {k: v for k, v in os.environ.items() if k not in (asyncart.STORE_ENV, "ASYNCART_TOKEN")}
    return subprocess.run(
        [ASYNCART, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exit status 1 and one line on stderr, no traceback."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    return done.stderr


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    """Locations that hold no store: missing, an empty directory, a directory of other files,
    a file, and a path below a file."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a store\n")
    (tmp_path / "a-file").write_text("not a directory\n")
    return {
        "missing": tmp_path / "missing",
        "empty": tmp_path / "empty",
        "other": tmp_path / "other",
        "file": tmp_path / "a-file",
        "below-a-file": tmp_path / "a-file" / "store",
    }


READERS = [
    ("ls",),
    ("ls", "demo"),
    ("versions", "ds"),
    ("show", "ds:v0"),
    ("diff", "ds:v0", "ds:v1"),
    ("log",),
    ("log", "ds"),
    ("get", "ds"),
    ("alias", "ds:v0", "best"),
    ("audit",),
    ("audit", "demo", "--read-data"),
    ("token", "list"),
    ("token", "revoke", "0123abcd"),
]
SOME_READERS = [("ls",), ("token", "list")]


@pytest.mark.parametrize(
    ("place", "argv"),
    [(place, argv) for place in ("missing", "file") for argv in READERS]
    + [(place, argv) for place in ("empty", "other", "below-a-file") for argv in SOME_READERS],
    ids=lambda value: value if isinstance(value, str) else " ".join(value),
)
def test_reading_commands_on_a_location_without_a_store_say_so_and_create_nothing(
    tmp_path: Path, places: dict[str, Path], place: str, argv: tuple[str, ...]
) -> None:
    before = tree(tmp_path)
    location = places[place]

    done = cli(tmp_path, *argv, "--store", str(location))

    line = one_error_line(done)
    assert str(location) in line
    if place in ("file", "below-a-file"):
        assert "cannot be a store" in line and "file" in line
    else:
        assert f"no store at {location}" in line
    assert tree(tmp_path) == before  # nothing made: no directory, no lock, no tokens file


@pytest.mark.parametrize("location", ["", "  ", "ftp://example.com/store", "s3://bucket/x"])
@pytest.mark.parametrize(
    "argv",
    [("ls",), ("audit",), ("put", "f.txt", "ds", "-t", "data"), ("token", "list")],
    ids=" ".join,
)
def test_an_empty_location_or_an_unknown_scheme_is_one_error_line(
    tmp_path: Path, location: str, argv: tuple[str, ...]
) -> None:
    (tmp_path / "f.txt").write_text("x\n")
    before = tree(tmp_path)

    line = one_error_line(cli(tmp_path, *argv, "--store", location))

    assert ("location is empty" in line) if not location.strip() else (repr(location) in line)
    assert tree(tmp_path) == before  # not a directory named "ftp:" in the working directory


def test_serve_and_token_create_on_bad_locations_are_one_line(
    tmp_path: Path, places: dict[str, Path]
) -> None:
    for place in ("file", "below-a-file"):
        for argv in (("serve", "--port", "0"), ("token", "create", "--project", "demo")):
            line = one_error_line(cli(tmp_path, *argv, "--store", str(places[place])))
            assert f"{places[place]} cannot be a store" in line
    for location in ("", "ftp://host/store"):
        one_error_line(cli(tmp_path, "serve", "--port", "0", "--store", location))
        one_error_line(cli(tmp_path, "token", "create", "--project", "x", "--store", location))


def test_writing_commands_create_the_store_and_readers_then_find_it(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x\n")
    new = tmp_path / "new" / "store"
    assert cli(tmp_path, "put", "f.txt", "ds", "-t", "data", "--store", str(new)).returncode == 0
    listed = cli(tmp_path, "ls", "-q", "--store", str(new))
    assert (listed.returncode, listed.stdout) == (0, "uncategorized/ds\n")

    tokens = tmp_path / "tokens-only"
    made = cli(tmp_path, "token", "create", "--project", "demo", "--store", str(tokens))
    assert made.returncode == 0 and made.stdout.startswith("aat_")
    assert {"log", "blobs", "tokens.json"} <= set(os.listdir(tokens))
    empty = cli(tmp_path, "ls", "--store", str(tokens))  # a store with nothing in it yet
    assert (empty.returncode, empty.stdout) == (0, "no artifacts\n")
    assert cli(tmp_path, "token", "list", "--store", str(tokens)).returncode == 0


async def test_the_api_on_a_location_without_a_store_names_it_and_creates_nothing(
    tmp_path: Path, places: dict[str, Path]
) -> None:
    before = tree(tmp_path)
    for place in ("missing", "empty", "other"):
        location = places[place]
        api = asyncart.Api(store=location)
        for call in (api.projects(), api.artifact("ds:latest"), api.history(), api.run("r1")):
            with pytest.raises(asyncart.NotFoundError, match=f"no store at {location}"):
                await call
        with pytest.raises(asyncart.NotFoundError, match=f"no store at {location}"):
            await asyncart.audit(store=str(location))
    for place in ("file", "below-a-file"):
        location = places[place]
        with pytest.raises(asyncart.BackendUnavailableError, match="cannot be a store"):
            await asyncart.Api(store=location).artifact_collections("demo")
        with pytest.raises(asyncart.BackendUnavailableError, match="cannot be a store"):
            await asyncart.audit(store=location)
    assert tree(tmp_path) == before


async def test_writers_on_a_file_refuse_before_anything_is_written(
    tmp_path: Path, places: dict[str, Path]
) -> None:
    artifact = asyncart.Artifact("ds", "data")
    await artifact.add_file(places["file"], name="f.txt")
    for place in ("file", "below-a-file"):
        with pytest.raises(asyncart.BackendUnavailableError, match="cannot be a store"):
            await artifact.save(store=places[place])
        with pytest.raises(asyncart.BackendUnavailableError, match="cannot be a store"):
            async with asyncart.init(store=places[place]):
                pass
    assert places["file"].read_text() == "not a directory\n"


def test_empty_and_unknown_locations_are_invalid_input_when_opened() -> None:
    for location in ("", " ", "ftp://host/store", "file:///tmp/store", "gs://bucket"):
        with pytest.raises(asyncart.InvalidInputError):
            asyncart.Api(store=location)
        with pytest.raises(asyncart.InvalidInputError):
            asyncart.LocalStore(location)


async def test_a_store_of_the_previous_release_is_recognised(tmp_path: Path) -> None:
    """The previous release marked nothing: its stores are ``log/`` and ``blobs/``, or only
    ``log/`` (a store that only saw runs), or only ``tokens.json`` (``token create``)."""
    store = tmp_path / "old"
    async with asyncart.init(project="demo", id="r1", store=store):
        pass
    shutil.rmtree(store / "blobs", ignore_errors=True)  # a run-only store of the last release
    assert os.listdir(store) == ["log"]
    info = await asyncart.Api(project="demo", store=store).run("r1")
    assert info.finished and (await asyncart.audit(store=store)).ok

    tokens_only = tmp_path / "served"
    tokens_only.mkdir()
    (tokens_only / "tokens.json").write_text('{"tokens": []}')
    assert await asyncart.Api(store=tokens_only).projects() == []


# -- a store that cannot be written -------------------------------------------------------


def unwritable_by_kernel() -> Path:
    """A directory the kernel refuses to create, even for root (sysfs)."""
    where = Path("/sys/asyncart-test-store")
    try:
        where.mkdir()
    except PermissionError:
        return where
    where.rmdir()
    pytest.skip("this machine lets us create directories under /sys")


async def test_a_store_that_cannot_be_created_is_not_writable_with_its_path(
    tmp_path: Path,
) -> None:
    where = unwritable_by_kernel()
    (tmp_path / "f.txt").write_text("x\n")
    artifact = asyncart.Artifact("ds", "data")
    await artifact.add_file(tmp_path / "f.txt")

    with pytest.raises(asyncart.BackendUnavailableError, match="not writable") as e:
        await artifact.save(store=where)
    assert str(where) in str(e.value)
    with pytest.raises(asyncart.BackendUnavailableError, match=f"store at {where} is not writable"):
        async with asyncart.init(store=where):
            pass


def test_the_cli_says_a_store_that_cannot_be_created_is_not_writable(tmp_path: Path) -> None:
    where = unwritable_by_kernel()
    (tmp_path / "f.txt").write_text("x\n")
    for argv in (
        ("put", "f.txt", "ds", "-t", "data"),
        ("serve", "--port", "0"),
        ("token", "create", "--project", "demo"),
    ):
        line = one_error_line(cli(tmp_path, *argv, "--store", str(where)))
        assert f"the store at {where} is not writable" in line


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user may enter and read, but only its owner write (pytest's own
    temporary directories are private to their owner)."""
    path = Path(tempfile.mkdtemp(prefix="asyncart-shared-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def as_other_user(fn: Callable[[], Any]) -> Any:
    """``fn()`` run by a user who does not own the test's files: a forked child that drops to
    ``nobody`` when the tests run as root (root's writes are never refused); as anyone else,
    the caller has made the files read-only and ``fn`` runs here. Returns what ``fn`` returns,
    or the exception it raised (as a value)."""
    if os.geteuid() != 0:
        try:
            return fn()
        except Exception as e:
            return e
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                result: Any = fn()
            except Exception as e:
                result = e
            os.write(write, pickle.dumps(result))
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return pickle.loads(data)


def make_read_only(store: Path) -> None:
    """For a non-root run only: what ``nobody`` meets when root owns the store."""
    if os.geteuid() != 0:
        for path in [store, *store.rglob("*")]:
            if path.is_dir():
                path.chmod(0o555)


async def save(store: Path, source: Path, name: str = "ds") -> str:
    artifact = asyncart.Artifact(name, "data")
    await artifact.add_file(source)
    return (await artifact.save(store=store)).qualified_name


def cli_as_other_user(*argv: str) -> tuple[int, str]:
    """``asyncart ARGV`` in-process for the other user (exit status, stderr)."""

    def run() -> tuple[int, str]:
        sys.stderr = io.StringIO()
        sys.stdout = io.StringIO()
        return main(list(argv)), sys.stderr.getvalue()

    return as_other_user(run)  # type: ignore[no-any-return]


def test_an_existing_store_another_user_owns_is_readable_but_not_writable(
    shared_dir: Path,
) -> None:
    store, source = shared_dir / "store", shared_dir / "f.txt"
    source.write_text("x\n")
    source.chmod(0o644)
    # A save by this user first: it also imports, before the fork, what the child needs (the
    # child may not be able to read this interpreter's files, under /root).
    assert asyncio.run(save(shared_dir / "warm-up", source)) == "uncategorized/ds:v0"
    assert main(["put", str(source), "ds", "-t", "data", "-q", "--store", str(store)]) == 0
    make_read_only(store)
    log_before = sorted(p.stat().st_size for p in store.rglob("*.log"))

    error = as_other_user(lambda: asyncio.run(save(store, source)))
    code, stderr = cli_as_other_user("put", str(source), "ds2", "-t", "data", "--store", str(store))
    listed = cli_as_other_user("ls", "-q", "--store", str(store))

    assert isinstance(error, asyncart.BackendUnavailableError), error
    assert f"the store at {store} is not writable" in str(error)
    assert code == 1 and len(stderr.splitlines()) == 1
    assert f"the store at {store} is not writable" in stderr
    assert listed == (0, "")  # reading needs no write access
    assert sorted(p.stat().st_size for p in store.rglob("*.log")) == log_before


def test_a_directory_inside_the_store_another_user_owns_is_not_writable_either(
    shared_dir: Path,
) -> None:
    """A store shared by several users whose top directories all may write: a directory that
    one user's writes made below them can still refuse another's."""
    store, source = shared_dir / "store", shared_dir / "f.txt"
    source.write_text("x\n")
    source.chmod(0o644)
    assert asyncio.run(save(store, source)) == "uncategorized/ds:v0"  # imports before the fork
    for top in (store, store / "log", store / "blobs"):
        top.chmod(0o777)
    make_read_only(store / "log" / "uncategorized")

    # The same bytes (already stored: no blob to write) as a new artifact, whose stream would
    # be a new file in log/uncategorized/artifacts/.
    error = as_other_user(lambda: asyncio.run(save(store, source, "other")))

    assert isinstance(error, asyncart.BackendUnavailableError), error
    assert f"the store at {store} is not writable" in str(error)
    assert f"{store}/log/uncategorized/artifacts/other.log" in str(error)


def test_a_store_another_user_cannot_read_says_so(shared_dir: Path) -> None:
    store, source = shared_dir / "store", shared_dir / "f.txt"
    source.write_text("x\n")
    assert main(["put", str(source), "ds", "-t", "data", "-q", "--store", str(store)]) == 0
    store.chmod(0o700 if os.geteuid() == 0 else 0o000)
    try:
        code, stderr = cli_as_other_user("ls", "--store", str(store))
    finally:
        store.chmod(0o755)
    assert code == 1 and len(stderr.splitlines()) == 1
    assert f"the store at {store} is not readable" in stderr


# -- serve ----------------------------------------------------------------------------------


def test_serve_on_a_busy_port_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        done = cli(tmp_path, "serve", "--store", str(tmp_path / "store"), "--port", str(port))

    line = one_error_line(done)
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in line
    assert "choose another port" in line
