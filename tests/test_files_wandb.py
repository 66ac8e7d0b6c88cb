"""W&B's file calls (issue 11, "Files"): get_entry / get_path, files() in pages, download with
a path prefix, checkout, verify, new_file, add_file(is_tmp=True), add_dir(merge=True); through
the public API on a local store, a real server and PostgreSQL + S3.

Re-downloads are checked by counting what the blob store was asked for (a wrapper around the
real store's blobs) and, through a server, the blob requests in its access log."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _serving import Server

import asyncart
from asyncart import (
    IntegrityError,
    InvalidInputError,
    MissingEntryError,
    MissingPathError,
    NotFoundError,
    SealedError,
    VerificationError,
)
from asyncart._store import open_store

ASYNCART = shutil.which("asyncart", path=str(Path(sys.executable).parent))


@dataclass
class Where:
    store: str
    token: str | None = None
    server: Server | None = None


@pytest.fixture(params=["local", "http", "pg"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Where]:
    """A fresh local store, the same through a real server, or PostgreSQL + S3."""
    if request.param == "pg":
        yield Where(request.getfixturevalue("pg_s3_store"))
    elif request.param == "http":
        server = Server(tmp_path / "served").start()
        try:
            yield Where(server.url, server.token("demo", write=True), server)
        finally:
            server.stop()
    else:
        yield Where(str(tmp_path / "store"))


class CountingBlobs:
    """The real blob store, counting the blobs ``get_files`` was asked for and the bytes it
    wrote (every download goes through it)."""

    def __init__(self, inner: asyncart.BlobStore) -> None:
        self._inner, self.files, self.bytes = inner, 0, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def get_files(self, items: Sequence[tuple[str, str]]) -> int:
        self.files += len(items)
        written = await self._inner.get_files(items)
        self.bytes += written
        return written


class CountingStore:
    """A real store whose blobs are a :class:`CountingBlobs`."""

    def __init__(self, inner: asyncart.Store) -> None:
        self._inner = inner
        self.blobs = CountingBlobs(inner.blobs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _tree(root: Path) -> Path:
    """a.txt, b.txt, images/1.png, images/2.png, img.txt, deep/x/y.bin."""
    (root / "images").mkdir(parents=True)
    (root / "deep" / "x").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "b.txt").write_text("beta\n")
    (root / "images" / "1.png").write_bytes(b"\x01" * 100)
    (root / "images" / "2.png").write_bytes(b"\x02" * 200)
    (root / "img.txt").write_text("not an image folder\n")
    (root / "deep" / "x" / "y.bin").write_bytes(os.urandom(3000))
    return root


FILES = ["a.txt", "b.txt", "deep/x/y.bin", "images/1.png", "images/2.png", "img.txt"]


async def _saved(where: Where, tmp_path: Path) -> asyncart.Artifact:
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_dir(_tree(tmp_path / "src"))
    return await artifact.save("demo", where.store, token=where.token)


def _counting(where: Where) -> CountingStore:
    return CountingStore(open_store(where.store, where.token))


async def _counted(where: Where) -> tuple[asyncart.Artifact, CountingBlobs]:
    store = _counting(where)
    return await asyncart.Api("demo", store).artifact("ds"), store.blobs  # type: ignore[arg-type]


def _listing(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()
    )


def _blob_gets(server: Server, mark: int) -> list[str]:
    """The blob reads a server served since ``mark`` (batched fetches and single blobs)."""
    return [
        str(e["path"])
        for e in server.access(mark)
        if str(e["path"]).startswith("/v1/blobs")
        and (e["path"] == "/v1/blobs/fetch" or e["method"] == "GET")
    ]


# -- get_entry, get_path, files -------------------------------------------------------------


async def test_get_entry_and_get_path_give_an_entry_that_downloads(where, tmp_path):
    saved = await _saved(where, tmp_path)
    entry = saved.get_entry("images/2.png")
    assert (entry.path, entry.size, entry.ref) == ("images/2.png", 200, None)
    assert entry.digest == saved.manifest.entries["images/2.png"].digest
    assert saved.get_path("images/2.png") == entry

    reader = await asyncart.Api("demo", where.store, where.token).artifact("ds:v0")
    local = await reader.get_entry("images/2.png").download(tmp_path / "one")
    assert local == tmp_path / "one" / "images" / "2.png"
    assert local.read_bytes() == b"\x02" * 200
    assert _listing(tmp_path / "one") == ["images/2.png"]  # that file only

    for missing in ["images/3.png", "images", ""]:
        with pytest.raises(MissingEntryError, match=r"demo/ds:v0 has no file") as info:
            saved.get_entry(missing)
        assert isinstance(info.value, KeyError | NotFoundError | FileNotFoundError)
    with pytest.raises(KeyError):  # what W&B code catches
        saved.get_path("nope.txt")
    with pytest.raises(InvalidInputError, match="is a draft"):
        asyncart.Artifact("d", "dataset").get_entry("a.txt")


async def test_files_are_listed_a_page_at_a_time(where, tmp_path):
    src = tmp_path / "many"
    src.mkdir()
    for i in range(250):
        (src / f"f{i:03}.txt").write_text(f"file {i}\n")
    artifact = asyncart.Artifact("many", "dataset")
    await artifact.add_dir(src)
    await artifact.save("demo", where.store, token=where.token)
    saved = await asyncart.Api("demo", where.store, where.token).artifact("many")

    files = saved.files(per_page=100)
    assert len(files) == 250
    pages = [page async for page in files.pages()]
    assert [len(p) for p in pages] == [100, 100, 50]
    assert [e.path for p in pages for e in p] == [f"f{i:03}.txt" for i in range(250)]
    assert [e.path async for e in saved.files()] == [f"f{i:03}.txt" for i in range(250)]
    first = pages[0][0]
    assert (first.size, first.digest) == (7, saved.manifest.entries["f000.txt"].digest)
    assert await first.download(tmp_path / "got") == tmp_path / "got" / "f000.txt"

    named = saved.files(names=["f200.txt", "absent.txt", "f007.txt", "f200.txt"], per_page=1)
    assert len(named) == 2  # names not in the version are left out, as in W&B
    assert [[e.path for e in p] async for p in named.pages()] == [["f007.txt"], ["f200.txt"]]

    for bad in [0, -1, 1.5, True]:
        with pytest.raises(InvalidInputError, match="per_page must be an int"):
            saved.files(per_page=bad)
    with pytest.raises(InvalidInputError, match="list of paths"):
        saved.files(names="f000.txt")


async def test_a_large_listing_pages_off_the_loop(tmp_path, monkeypatch):
    """Pages above a few thousand entries are made in a thread (blockbuster checks the loop);
    the pages are made one at a time from the manifest."""
    src = tmp_path / "big"
    src.mkdir()
    for i in range(6000):
        (src / f"{i:05}").write_bytes(b"")
    artifact = asyncart.Artifact("big", "dataset")
    await artifact.add_dir(src)
    saved = await artifact.save("demo", str(tmp_path / "store"))
    spans: list[tuple[int, int]] = []
    entries_at = asyncart.Manifest.entries_at

    def recorded(manifest: asyncart.Manifest, start: int, stop: int) -> list[asyncart.Entry]:
        spans.append((start, stop))
        return entries_at(manifest, start, stop)

    monkeypatch.setattr(asyncart.Manifest, "entries_at", recorded)
    sizes = [len(page) async for page in saved.files(per_page=2500).pages()]
    assert sizes == [2500, 2500, 1000]
    assert spans == [(0, 2500), (2500, 5000), (5000, 7500)]  # a page made at a time


# -- download: prefix, and leaving good files in place ----------------------------------------


async def test_download_with_a_path_prefix(where, tmp_path):
    saved = await _saved(where, tmp_path)
    reader = await asyncart.Api("demo", where.store, where.token).artifact("ds")
    root = await reader.download(tmp_path / "imgs", path_prefix="images/")
    assert root == tmp_path / "imgs"
    assert _listing(root) == ["images/1.png", "images/2.png"]
    # a plain string prefix, as in W&B: "im" is images/ and img.txt
    await reader.download(tmp_path / "im", path_prefix="im")
    assert _listing(tmp_path / "im") == ["images/1.png", "images/2.png", "img.txt"]
    with pytest.raises(MissingPathError, match=r"no file of demo/ds:v0 starts with 'videos/'"):
        await saved.download(tmp_path / "none", path_prefix="videos/")
    assert not (tmp_path / "none").exists()


async def test_downloading_again_fetches_only_what_changed(where, tmp_path):
    await _saved(where, tmp_path)
    root = tmp_path / "out"
    artifact, counted = await _counted(where)
    await artifact.download(root)
    total = sum(e.size for e in artifact.manifest.entries.values())
    assert (counted.files, counted.bytes) == (len(FILES), total)

    mark = where.server.log_size() if where.server else 0
    artifact, counted = await _counted(where)
    seen: list[asyncart.Progress] = []
    await artifact.download(root, progress=seen.append)
    assert (counted.files, counted.bytes) == (0, 0)  # everything was in place
    assert (seen[-1].files_done, seen[-1].bytes_done) == (len(FILES), total)  # done, kept
    if where.server:
        assert _blob_gets(where.server, mark) == []

    (root / "a.txt").write_text("ALPHA\n")  # same size, other bytes: the digest tells
    (root / "b.txt").write_text("a longer beta\n")  # another size: not even read
    (root / "images" / "1.png").unlink()
    artifact, counted = await _counted(where)
    await artifact.download(root)
    assert (counted.files, counted.bytes) == (3, 6 + 5 + 100)
    await artifact.verify(root)


# -- checkout and verify --------------------------------------------------------------------


async def test_checkout_removes_what_the_version_does_not_hold(where, tmp_path):
    await _saved(where, tmp_path)
    root = tmp_path / "work"
    artifact, counted = await _counted(where)
    assert await artifact.checkout(root) == root
    assert _listing(root) == FILES

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not under the root")
    (root / "extra.txt").write_text("not in the version")
    (root / "images" / "3.png").write_bytes(b"\x03")
    (root / "new" / "deeper").mkdir(parents=True)
    (root / "new" / "deeper" / "z").write_text("z")
    (root / "empty").mkdir()
    (root / "link-out").symlink_to(outside)  # a link to a directory: removed, not followed
    (root / "images" / "to-a").symlink_to(root / "a.txt")
    artifact, counted = await _counted(where)
    await artifact.checkout(root)
    assert _listing(root) == FILES
    assert sorted(p.name for p in root.iterdir()) == ["a.txt", "b.txt", "deep", "images", "img.txt"]
    assert (outside / "keep.txt").read_text() == "not under the root"
    assert (counted.files, counted.bytes) == (0, 0)  # the version's files were in place
    await artifact.verify(root)


async def test_checkout_refuses_a_directory_in_a_files_place_and_removes_nothing(tmp_path):
    saved = await _saved(Where(str(tmp_path / "store")), tmp_path)
    root = tmp_path / "work"
    (root / "a.txt").mkdir(parents=True)  # a directory where a file of the version goes
    (root / "extra.txt").write_text("stays: the checkout failed before removing anything")
    with pytest.raises(InvalidInputError, match=r"refusing to overwrite .*a.txt: not a regular"):
        await saved.checkout(root)
    assert (root / "extra.txt").exists()
    with pytest.raises(InvalidInputError, match="is a draft"):
        await asyncart.Artifact("d", "dataset").checkout(root)


async def test_verify_raises_a_value_error_naming_each_file(tmp_path, monkeypatch):
    saved = await _saved(Where(str(tmp_path / "store")), tmp_path)
    monkeypatch.chdir(tmp_path)
    root = await saved.download()  # the default root, as verify's
    assert root == Path("artifacts") / "ds:v0"
    await saved.verify()
    (root / "a.txt").write_text("ALPHA\n")
    (root / "images" / "2.png").unlink()
    (root / "extra").write_text("ignored by verify")
    with pytest.raises(VerificationError, match="2 problems: changed a.txt; missing images/2.png"):
        await saved.verify(root)
    with pytest.raises(ValueError, match="does not match demo/ds:v0"):  # what W&B code catches
        await saved.verify()
    with pytest.raises(IntegrityError):
        await saved.verify(root)


# -- new_file, is_tmp, merge, linked directories --------------------------------------------


async def test_new_file_writes_text_and_bytes_into_the_draft(where, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    artifact = asyncart.Artifact("made", "dataset")
    async with artifact.new_file("config/params.json") as f:
        await f.write(json.dumps({"lr": 0.1, "name": "é"}))
        local = Path(f.wrapped.name)
    async with artifact.new_file("weights.bin", mode="wb") as f:
        await f.write(b"\x00\x01\x02")
    assert local.parent.parent == tmp_path / "tmp" and local.exists()  # until the commit
    saved = await artifact.save("demo", where.store, token=where.token)
    assert list(saved.manifest.entries) == ["config/params.json", "weights.bin"]
    assert os.listdir(tmp_path / "tmp") == []  # uploaded, then removed

    root = await saved.download(tmp_path / "out")
    assert json.loads((root / "config" / "params.json").read_text("utf-8"))["name"] == "é"
    assert (root / "weights.bin").read_bytes() == b"\x00\x01\x02"
    with pytest.raises(SealedError):
        async with saved.new_file("more.txt") as f:
            await f.write("x")


async def test_new_file_adds_nothing_when_its_block_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    artifact = asyncart.Artifact("made", "dataset")
    with pytest.raises(RuntimeError, match="boom"):
        async with artifact.new_file("half.txt") as f:
            await f.write("half")
            local = Path(f.wrapped.name)
            raise RuntimeError("boom")
    assert not local.exists() and "half.txt" not in artifact.manifest
    async with artifact.new_file("a.txt") as f:
        await f.write("one")
    with pytest.raises(InvalidInputError, match="'a.txt' is already in made"):
        async with artifact.new_file("a.txt") as f:
            raise AssertionError("not reached: refused before the block")
    async with artifact.new_file("a.txt", overwrite=True) as f:
        await f.write("two")
    for bad in ["r", "a", "rb", "w+x"]:
        with pytest.raises(InvalidInputError, match="mode must be one of"):
            async with artifact.new_file("b.txt", mode=bad):
                pass
    with pytest.raises(InvalidInputError):
        async with artifact.new_file("../escape.txt"):
            pass
    saved = await artifact.save("demo", str(tmp_path / "store"))
    root = await saved.download(tmp_path / "out")
    assert _listing(root) == ["a.txt"] and (root / "a.txt").read_text() == "two"
    assert os.listdir(tmp_path / "tmp") == []


async def test_new_file_in_a_run_logged_upserted_and_finished(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    store = str(tmp_path / "store")
    async with asyncart.init("demo", group="g", store=store) as run:
        logged = asyncart.Artifact("notes", "text")
        async with logged.new_file("n.txt") as f:
            await f.write("logged")
        await run.log_artifact(logged)
        assert os.listdir(tmp_path / "tmp") == []
        part = asyncart.Artifact("shards", "dataset")
        async with part.new_file("s0.txt") as f:
            await f.write("shard 0")
        await run.upsert_artifact(part)
        assert os.listdir(tmp_path / "tmp") == []
        last = asyncart.Artifact("shards", "dataset")
        async with last.new_file("s1.txt") as f:
            await f.write("shard 1")
        finished = await run.finish_artifact(last)
        assert os.listdir(tmp_path / "tmp") == []
    assert sorted(finished.manifest.entries) == ["s0.txt", "s1.txt"]
    root = await finished.download(tmp_path / "out")
    assert (root / "s1.txt").read_text() == "shard 1"


async def test_add_file_is_tmp_names_the_file_by_its_content(tmp_path):
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    one.write_text("a,b\n1,2\n")
    two.write_text("a,b\n3,4\n")
    artifact = asyncart.Artifact("tables", "dataset")
    first = await artifact.add_file(one, "tables/data.csv", is_tmp=True)
    second = await artifact.add_file(two, "tables/data.csv", is_tmp=True)
    again = await artifact.add_file(one, "tables/data.csv", is_tmp=True)
    assert first.path == f"tables/data.{first.digest[:20]}.csv"
    assert second.path == f"tables/data.{second.digest[:20]}.csv" != first.path
    assert again == first
    archive = tmp_path / "x.tar.gz"
    archive.write_bytes(b"gz")
    packed = await artifact.add_file(archive, is_tmp=True)
    assert packed.path == f"x.{packed.digest[:20]}.tar.gz"
    saved = await artifact.save("demo", str(tmp_path / "store"))
    assert sorted(saved.manifest.entries) == sorted([first.path, second.path, packed.path])


async def test_add_dir_merge_is_wandbs_name_for_overwrite(tmp_path):
    src = _tree(tmp_path / "src")
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_dir(src)
    (src / "a.txt").write_text("changed\n")
    with pytest.raises(InvalidInputError, match="'a.txt' is already in ds with other content"):
        await artifact.add_dir(src)
    await artifact.add_dir(src, merge=True)
    saved = await artifact.save("demo", str(tmp_path / "store"))
    draft = saved.new_draft()
    (src / "b.txt").write_text("changed too\n")
    with pytest.raises(InvalidInputError):
        await draft.add_dir(src)
    await draft.add_dir(src, merge=True)
    v1 = await draft.save()
    root = await v1.download(tmp_path / "out")
    assert (root / "a.txt").read_text() == "changed\n"
    assert (root / "b.txt").read_text() == "changed too\n"


async def test_add_dir_does_not_follow_a_linked_directory_and_says_so(tmp_path):
    src = _tree(tmp_path / "src")
    (src / "linked").symlink_to(src / "images")
    artifact = asyncart.Artifact("ds", "dataset")
    with pytest.warns(asyncart.AsyncartWarning, match=r"'linked' \(a link to a directory\)"):
        await artifact.add_dir(src)
    assert sorted(artifact.manifest.entries) == FILES


async def test_log_artifact_of_a_path_builds_the_artifact(where, tmp_path):
    src = _tree(tmp_path / "src")
    async with asyncart.init("demo", id="r1", store=where.store, token=where.token) as run:
        folder = await run.log_artifact(str(src) + "/")
        assert (folder.name, folder.type, folder.version) == ("run-r1-src:v0", "unspecified", "v0")
        assert sorted(folder.manifest.entries) == FILES
        one = await run.log_artifact(src / "a.txt", name="alpha", type="text", aliases=["x"])
        assert (one.name, one.type, list(one.manifest.entries)) == ("alpha:v0", "text", ["a.txt"])
        assert "x" in one.aliases
        with pytest.raises(NotFoundError, match="no such file or directory"):
            await run.log_artifact(tmp_path / "absent")
        with pytest.raises(InvalidInputError, match="for logging a path"):
            await run.log_artifact(asyncart.Artifact("d", "dataset"), name="other")
    info = await asyncart.Api("demo", where.store, where.token).run("r1")
    assert info.logged == (("run-r1-src", 0), ("alpha", 0))
    got = await asyncart.Api("demo", where.store, where.token).artifact("alpha:x")
    assert (await got.logged_by()).id == "r1"


# -- the command line -----------------------------------------------------------------------


def _cli(store: str, *args: str) -> subprocess.CompletedProcess[str]:
    assert ASYNCART, "the asyncart console script is not installed"
    env = {**os.environ, asyncart.STORE_ENV: store}
    return subprocess.run([ASYNCART, *args], capture_output=True, text=True, env=env, timeout=60)


def test_cli_get_path_prefix_and_checkout(tmp_path):
    store = str(tmp_path / "store")
    src = _tree(tmp_path / "src")
    done = _cli(store, "put", str(src), "ds", "-t", "dataset", "-q")
    assert done.returncode == 0, done.stderr

    done = _cli(store, "get", "ds", str(tmp_path / "imgs"), "--path-prefix", "images/", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert (data["dest"], data["path_prefix"]) == (str(tmp_path / "imgs"), "images/")
    assert _listing(tmp_path / "imgs") == ["images/1.png", "images/2.png"]
    done = _cli(store, "get", "ds", str(tmp_path / "x"), "--path-prefix", "zz/")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "asyncart: error: no file of uncategorized/ds:v0 starts with 'zz/'"
    )
    done = _cli(store, "get", "ds", str(tmp_path / "x"), "--path-prefix", "a", "--verify")
    assert done.returncode == 1 and "not with --path-prefix" in done.stderr

    work = tmp_path / "work"
    work.mkdir()
    (work / "stale.txt").write_text("old")
    done = _cli(store, "checkout", "ds", str(work), "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert (data["artifact"], data["dest"], data["files"]) == (
        "uncategorized/ds:v0",
        str(work),
        len(FILES),
    )
    assert _listing(work) == FILES
    done = _cli(store, "checkout", "ds", str(work))
    assert done.returncode == 0 and done.stdout.startswith(
        f"checked out uncategorized/ds:v0 in {work}: {len(FILES)} files"
    )
