"""References (``add_reference``): entries whose bytes stay at a file://, http(s):// or s3://
URI, never uploaded; downloads fetch them from there and check them (with ``checksum``)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3
import msgspec
import pytest
from _records import chain, created
from _s3 import S3Server
from _serving import Server
from aiohttp import web

import asyncart
from asyncart import IntegrityError, InvalidInputError, NotFoundError
from asyncart._backends.http import HttpStore
from asyncart._backends.s3_blobs import S3BlobStore
from asyncart._domain.events import DraftOpened, Entry, FilesAdded, decode_entries, encode_entries
from asyncart._domain.manifest import Manifest, Overlay, manifest_digest
from asyncart._references import derived_digest


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


def _hash(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _listing(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


DATA = {"a.txt": b"alpha\n", "sub/b.txt": b"beta\n", "sub/deep/c.bin": b"\x00\x01gamma"}


# -- file:// -----------------------------------------------------------------------------------


async def test_file_references_of_a_file_and_a_directory(where: Where, tmp_path: Path) -> None:
    data = _tree(tmp_path / "data", DATA)
    (tmp_path / "own.txt").write_text("uploaded\n")
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_file(tmp_path / "own.txt")
    added = await artifact.add_reference(data.as_uri(), name="data")
    one = await artifact.add_reference((data / "a.txt").as_uri(), name="single.txt")
    assert [e.path for e in added] == ["data/a.txt", "data/sub/b.txt", "data/sub/deep/c.bin"]
    assert [(e.digest, e.size) for e in added] == [(_hash(d), len(d)) for d in DATA.values()]
    assert one[0].ref == (data / "a.txt").as_uri()
    saved = await artifact.save("demo", where.store, token=where.token)

    assert saved.get_entry("data/sub/b.txt").ref == (data / "sub" / "b.txt").as_uri()
    assert saved.get_entry("own.txt").ref is None
    assert saved.get_entry("single.txt").entry == one[0]
    reader = await asyncart.Api("demo", where.store, where.token).artifact("ds")
    refs = {e.path: e.ref async for e in reader.files()}
    assert refs == {"own.txt": None, **{e.path: e.ref for e in [*added, *one]}}
    root = await reader.download(tmp_path / "out")
    expected = {"own.txt": b"uploaded\n", "single.txt": DATA["a.txt"]}
    expected |= {f"data/{k}": v for k, v in DATA.items()}
    assert _listing(root) == expected
    await reader.verify(root)
    report = await asyncart.audit(store=where.store, token=where.token, read_data=True)
    assert report.ok, report
    assert report.blobs == 1  # own.txt: a reference is no blob to check


async def test_references_are_not_uploaded(tmp_path: Path) -> None:
    data = _tree(tmp_path / "data", DATA)
    store = tmp_path / "store"
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_reference(data.as_uri())
    saved = await artifact.save("demo", store)
    assert len(saved.manifest) == 3
    blobs = (
        [p for p in (store / "blobs").rglob("*") if p.is_file()]
        if (store / "blobs").exists()
        else []
    )
    assert blobs == []  # not even a snapshot: nothing of the files was stored
    gc = await asyncart.gc(store=store, grace=0)
    assert gc.blobs_removed == 0
    assert _listing(await saved.download(tmp_path / "out")) == DATA  # still fetched from data/


async def test_max_objects_bounds_a_directory(tmp_path: Path) -> None:
    data = _tree(tmp_path / "data", DATA)
    artifact = asyncart.Artifact("ds", "dataset")
    with pytest.raises(InvalidInputError, match=r"holds more than 2 objects \(max_objects\)"):
        await artifact.add_reference(data.as_uri(), max_objects=2)
    assert len(artifact.manifest) == 0  # nothing added
    assert len(await artifact.add_reference(data.as_uri(), max_objects=3)) == 3
    with pytest.raises(InvalidInputError, match="max_objects must be an int >= 1"):
        await artifact.add_reference(data.as_uri(), max_objects=0)


async def test_bad_references_are_refused(tmp_path: Path) -> None:
    artifact = asyncart.Artifact("ds", "dataset")
    with pytest.raises(InvalidInputError, match="use file://, http"):
        await artifact.add_reference("ftp://example.com/x")
    with pytest.raises(NotFoundError, match="no such file or directory"):
        await artifact.add_reference((tmp_path / "nothing").as_uri())


async def test_download_verifies_a_checked_reference(tmp_path: Path) -> None:
    data = _tree(tmp_path / "data", DATA)
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_reference(data.as_uri())
    saved = await artifact.save("demo", tmp_path / "store")
    (data / "sub" / "b.txt").write_bytes(b"BETA\n")  # same size, other bytes
    with pytest.raises(IntegrityError, match=r"sub/b\.txt: the bytes at its reference file://"):
        await saved.download(tmp_path / "out")
    assert not (tmp_path / "out" / "sub" / "b.txt").exists()  # nothing unchecked left in place


async def test_without_checksum_a_reference_is_tracked_by_uri(tmp_path: Path) -> None:
    data = _tree(tmp_path / "data", {"a.txt": b"alpha\n"})
    uri = (data / "a.txt").as_uri()
    artifact = asyncart.Artifact("ds", "dataset")
    [entry] = await artifact.add_reference(uri, checksum=False)
    assert entry == Entry("a.txt", derived_digest(uri), 6, uri)  # no ETag for a file
    assert entry.digest != _hash(b"alpha\n")
    v0 = await artifact.save("demo", tmp_path / "store")

    (data / "a.txt").write_bytes(b"changed, and longer\n")
    again = asyncart.Artifact("ds", "dataset")
    await again.add_reference(uri, checksum=False)
    same = await again.save("demo", tmp_path / "store")
    assert same.version == "v0"  # by URI, nothing changed: the same version, as in W&B
    root = await v0.download(tmp_path / "out")  # unchecked: taken as it is now
    assert (root / "a.txt").read_bytes() == b"changed, and longer\n"
    await v0.verify(root)  # nothing to compare an unchecked reference with


async def test_a_moved_reference_is_a_new_version(tmp_path: Path) -> None:
    data = _tree(tmp_path / "data", {"a.txt": b"alpha\n", "copy.txt": b"alpha\n"})
    first = asyncart.Artifact("ds", "dataset")
    await first.add_reference((data / "a.txt").as_uri(), name="f.txt")
    v0 = await first.save("demo", tmp_path / "store")
    moved = asyncart.Artifact("ds", "dataset")
    await moved.add_reference((data / "copy.txt").as_uri(), name="f.txt")
    v1 = await moved.save("demo", tmp_path / "store")
    assert v1.version == "v1" and v1.digest != v0.digest  # same bytes, from elsewhere
    assert (await v1.diff(v0)).changed == ("f.txt",)
    reloaded = await asyncart.Api("demo", tmp_path / "store").artifact("ds:v1")
    assert reloaded.get_entry("f.txt").ref == (data / "copy.txt").as_uri()
    assert (await asyncart.audit(store=tmp_path / "store")).ok


async def test_a_draft_over_a_version_with_references(where: Where, tmp_path: Path) -> None:
    data = _tree(tmp_path / "data", DATA)
    (tmp_path / "x.txt").write_text("x\n")
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_reference(data.as_uri())
    v0 = await artifact.save("demo", where.store, token=where.token)
    draft = v0.new_draft()
    draft.remove("sub/deep/")
    await draft.add_file(tmp_path / "x.txt")
    await draft.add_reference((data / "a.txt").as_uri(), name="again.txt")
    v1 = await draft.save()
    assert sorted(v1.manifest.entries) == ["a.txt", "again.txt", "sub/b.txt", "x.txt"]
    assert v1.get_entry("sub/b.txt").ref == (data / "sub" / "b.txt").as_uri()
    out = await v1.download(tmp_path / "out")
    assert _listing(out) == {
        "a.txt": b"alpha\n",
        "again.txt": b"alpha\n",
        "sub/b.txt": b"beta\n",
        "x.txt": b"x\n",
    }
    assert (await asyncart.audit(store=where.store, token=where.token, read_data=True)).ok


# -- the compact manifest and its snapshots keep references ----------------------------------


def test_manifest_snapshots_and_replays_keep_references() -> None:
    plain = [Entry(f"f{i:05}", _hash(b"%d" % i), i) for i in range(3000)]
    refs = {p.path: Entry(p.path, p.digest, p.size, f"s3://b/{p.path}") for p in plain[::97]}
    entries = [refs.get(e.path, e) for e in plain]
    manifest = Manifest({e.path: e for e in entries})
    assert list(manifest.entries.values()) == entries
    assert manifest.digest == manifest_digest(entries) != manifest_digest(plain)
    assert manifest.has_refs and not Manifest({e.path: e for e in plain}).has_refs
    assert len(list(manifest.iter_blob_digests())) == len(plain) - len(refs)
    snapshot = manifest.to_snapshot()
    assert snapshot == encode_entries(entries)
    again = Manifest.from_snapshot(snapshot)
    assert list(again.entries.values()) == entries and again.digest == manifest.digest
    overlay = Overlay(manifest)
    overlay["f00001"] = Entry("f00001", plain[1].digest, 1, "https://h/x")
    del overlay["f00097"]
    changed = overlay.manifest()
    assert changed.get("f00001") == Entry("f00001", plain[1].digest, 1, "https://h/x")
    assert changed.get("f00194") == refs["f00194"]
    assert changed.digest == manifest_digest([e for e in overlay.values()])


def test_entries_written_before_references_decode() -> None:
    old = msgspec.msgpack.encode([["a", "0" * 64, 3]])  # as releases before refs wrote them
    assert decode_entries(old, "snapshot") == [Entry("a", "0" * 64, 3)]
    assert Manifest.from_snapshot(old).get("a") == Entry("a", "0" * 64, 3, None)
    # plain entries keep the snapshot bytes they had; a reader before refs ignores a ref
    assert encode_entries([Entry("a", "0" * 64, 3)]) == old
    body = msgspec.msgpack.encode(FilesAdded("d", [Entry("a", "0" * 64, 3, "file:///a")]))
    assert b"file:///a" in body


# -- http(s):// --------------------------------------------------------------------------------


@dataclass
class Site:
    url: str
    files: dict[str, bytes]
    etags: dict[str, str]


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    """A real aiohttp server on a loopback port, serving ``files`` with their ``etags``."""
    state = Site("", {"/data.bin": b"served bytes\n" * 1000}, {"/data.bin": '"v1"'})

    async def serve(request: web.Request) -> web.StreamResponse:
        data = state.files.get(request.path)
        if data is None:
            raise web.HTTPNotFound()
        headers = {"ETag": state.etags[request.path]}
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(len(data))})
        return web.Response(body=data, headers=headers)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", serve)
    app.router.add_route("HEAD", "/{tail:.*}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()


async def test_http_reference_with_checksum(site: Site, tmp_path: Path) -> None:
    url = f"{site.url}/data.bin"
    artifact = asyncart.Artifact("web", "dataset")
    [entry] = await artifact.add_reference(url)
    body = site.files["/data.bin"]
    assert entry == Entry("data.bin", _hash(body), len(body), url)
    saved = await artifact.save("demo", tmp_path / "store")
    root = await saved.download(tmp_path / "out")
    assert (root / "data.bin").read_bytes() == body
    site.files["/data.bin"] = body.upper()
    with pytest.raises(IntegrityError, match=rf"data\.bin: the bytes at its reference {url}"):
        await saved.download(tmp_path / "again")
    with pytest.raises(NotFoundError, match="404"):
        await asyncart.Artifact("web", "dataset").add_reference(f"{site.url}/gone.bin")


async def test_http_reference_without_checksum_keeps_the_etag(site: Site, tmp_path: Path) -> None:
    url = f"{site.url}/data.bin"
    body = site.files["/data.bin"]
    artifact = asyncart.Artifact("web", "dataset")
    [entry] = await artifact.add_reference(url, name="d.bin", checksum=False)
    assert entry.digest == derived_digest(f'{url}\n"v1"') and entry.size == len(body)
    v0 = await artifact.save("demo", tmp_path / "store")
    assert v0.get_entry("d.bin").ref == url  # the URI alone

    site.etags["/data.bin"] = '"v2"'  # the server says it changed: a new version
    again = asyncart.Artifact("web", "dataset")
    await again.add_reference(url, name="d.bin", checksum=False)
    v1 = await again.save("demo", tmp_path / "store")
    assert v1.version == "v1" and v1.digest != v0.digest
    assert (await v1.get_entry("d.bin").download(tmp_path / "out")).read_bytes() == body


# -- s3:// -------------------------------------------------------------------------------------


async def _put(server: S3Server, key: str, data: bytes) -> None:
    """Put an object with aiobotocore (a client set up as the S3 store's, off the loop)."""
    store = S3BlobStore.from_url(f"s3://{server.bucket}")
    async with store.held(), store._use() as client:
        await client.put_object(Bucket=server.bucket, Key=key, Body=data)


async def test_s3_references(s3_server: S3Server, s3_url: str, tmp_path: Path) -> None:
    prefix = f"refs-{uuid.uuid4().hex[:8]}"
    for name, data in DATA.items():
        await _put(s3_server, f"{prefix}/set/{name}", data)
    bucket = s3_server.bucket
    artifact = asyncart.Artifact("s3ds", "dataset")
    added = await artifact.add_reference(f"s3://{bucket}/{prefix}/set", name="set")
    assert [(e.path, e.digest, e.size) for e in added] == [
        (f"set/{k}", _hash(v), len(v)) for k, v in DATA.items()
    ]
    [one] = await artifact.add_reference(f"s3://{bucket}/{prefix}/set/a.txt", checksum=False)
    assert one.path == "a.txt" and one.ref is not None and "\n" in one.ref  # with its ETag
    with pytest.raises(InvalidInputError, match="more than 2 objects"):
        await artifact.add_reference(f"s3://{bucket}/{prefix}/set/", max_objects=2)
    with pytest.raises(NotFoundError, match="no object at that key or under it"):
        await artifact.add_reference(f"s3://{bucket}/{prefix}/nothing")
    saved = await artifact.save("demo", tmp_path / "store")
    assert saved.get_entry("set/sub/b.txt").ref == f"s3://{bucket}/{prefix}/set/sub/b.txt"
    assert saved.get_entry("a.txt").ref == f"s3://{bucket}/{prefix}/set/a.txt"
    root = await saved.download(tmp_path / "out")
    assert _listing(root) == {"a.txt": DATA["a.txt"], **{f"set/{k}": v for k, v in DATA.items()}}

    await _put(s3_server, f"{prefix}/set/sub/b.txt", b"BETA\n")
    with pytest.raises(IntegrityError, match=r"set/sub/b\.txt: the bytes at its reference s3://"):
        await saved.download(tmp_path / "again")


# -- through a server: a reference claims no blob --------------------------------------------


SECRET = b"project A's weights, which project B must not learn about\n"


@pytest.fixture
def tokens(server: Server) -> tuple[str, str]:
    """Writers of projects a and b."""
    return server.token("a", write=True), server.token("b", write=True)


async def test_a_reference_cannot_claim_another_projects_blob(
    server: Server, tokens: tuple[str, str], tmp_path: Path
) -> None:
    """B references a file with the very bytes of A's blob: its commit works (nothing is
    uploaded, nothing is claimed), and the blob stays invisible to B."""
    a, b = tokens
    (tmp_path / "w.bin").write_bytes(SECRET)
    mine = asyncart.Artifact("weights", "model")
    await mine.add_file(tmp_path / "w.bin")
    await mine.save("a", server.url, token=a)
    digest = _hash(SECRET)

    theirs = asyncart.Artifact("stolen", "model")
    [entry] = await theirs.add_reference((tmp_path / "w.bin").as_uri())
    assert entry.digest == digest
    saved = await theirs.save("b", server.url, token=b)
    async with HttpStore(server.url, b) as store:
        assert await store.blobs.missing({digest: len(SECRET)}) == {digest}
        with pytest.raises(NotFoundError):
            await store.blobs.get_bytes(digest)
    assert (await saved.download(tmp_path / "out") / "w.bin").read_bytes() == SECRET
    stream = "b/artifacts/forged"  # the server checks what a ref is
    bad = Entry("x", digest, 1, "javascript:alert(1)")
    bodies = [created(stream), DraftOpened("d"), FilesAdded("d", [bad])]
    async with HttpStore(server.url, b) as store:
        with pytest.raises(InvalidInputError, match="is not a reference URI"):
            await store.log.append(stream, chain(stream, bodies), 0)
        assert await store.log.read(stream) == []


# -- CLI ---------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncart", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_put_reference(tmp_path: Path) -> None:
    data = _tree(tmp_path / "data", DATA)
    store = str(tmp_path / "store")
    done = _cli(
        "put", "ds", "-t", "dataset", "--reference", data.as_uri(), "--json", "--store", store
    )
    assert done.returncode == 0, done.stderr
    put = json.loads(done.stdout)
    assert (put["files"], put["stored_bytes"]) == (3, 0)
    done = _cli(
        "put", "loose", "-t", "dataset", "-r", (data / "a.txt").as_uri(), "--no-checksum",
        "--json", "--store", store,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = _cli("get", "ds", str(tmp_path / "out"), "--store", store)
    assert got.returncode == 0, got.stderr
    assert _listing(tmp_path / "out") == DATA
    missing = _cli("put", "none", "-t", "dataset", "--store", store)
    assert missing.returncode != 0 and "a DIR_OR_FILE or a --reference URI" in missing.stderr


async def test_a_copy_of_a_store_keeps_references_without_blobs(tmp_path: Path) -> None:
    data = _tree(tmp_path / "data", DATA)
    (tmp_path / "own.txt").write_text("uploaded\n")
    src, dst = tmp_path / "src", tmp_path / "dst"
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_reference(data.as_uri())
    await artifact.add_file(tmp_path / "own.txt")
    await artifact.save("demo", src)
    report = await asyncart.copy_store(str(src), str(dst))
    assert report.blobs == 1  # own.txt; the references have none
    copied = await asyncart.Api("demo", dst).artifact("ds")
    assert copied.get_entry("sub/b.txt").ref == (data / "sub" / "b.txt").as_uri()
    assert _listing(await copied.download(tmp_path / "out")) == {**DATA, "own.txt": b"uploaded\n"}
    assert (await asyncart.audit(store=dst, read_data=True)).ok


async def test_references_in_a_distributed_version(tmp_path: Path) -> None:
    data = _tree(tmp_path / "data", DATA)
    store = str(tmp_path / "store")
    for part in ("a.txt", "sub"):
        async with asyncart.init(project="demo", group="g1", store=store) as run:
            piece = asyncart.Artifact("shards", "dataset")
            await piece.add_reference((data / part).as_uri(), name=part)
            await run.upsert_artifact(piece)
    async with asyncart.init(project="demo", group="g1", store=store) as run:
        final = await run.finish_artifact(asyncart.Artifact("shards", "dataset"))
    assert sorted(final.manifest.entries) == sorted(DATA)
    assert final.get_entry("sub/deep/c.bin").ref == (data / "sub" / "deep" / "c.bin").as_uri()
    assert _listing(await final.download(tmp_path / "out")) == DATA
    assert (await asyncart.audit(store=store)).ok


async def test_references_survive_snapshots_checkpoints_and_gc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncart._domain.checkpoint
    import asyncart._repository

    monkeypatch.setattr(asyncart._repository, "SNAPSHOT_EVERY", 1)  # every child: a snapshot
    monkeypatch.setattr(asyncart._domain.checkpoint, "CHECKPOINT_EVERY", 2)
    data = _tree(tmp_path / "data", DATA)
    (tmp_path / "own.txt").write_text("uploaded\n")
    store = tmp_path / "store"
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_reference(data.as_uri())
    await artifact.add_file(tmp_path / "own.txt")
    v0 = await artifact.save("demo", store)
    draft = v0.new_draft()
    await draft.add_reference((data / "a.txt").as_uri(), name="more/a.txt")
    v1 = await draft.save()
    snapshot = v1._require_saved().version.commit.snapshot
    assert snapshot is not None  # v1 is read from a snapshot
    report = await asyncart.gc(store=store, grace=0)
    assert report.blobs_removed == 0 and report.blobs_kept == 2  # own.txt and the snapshot

    reread = await asyncart.Api("demo", store).artifact("ds:v1")  # a fresh read: snapshot
    assert reread.manifest.digest == v1.digest
    assert reread.get_entry("more/a.txt").ref == (data / "a.txt").as_uri()
    assert reread.get_entry("sub/b.txt").ref == (data / "sub" / "b.txt").as_uri()
    assert reread.get_entry("own.txt").ref is None
    assert list(store.rglob("*.ckpt"))  # and its state from a checkpoint
    out = await reread.download(tmp_path / "out")
    assert _listing(out) == {**DATA, "more/a.txt": DATA["a.txt"], "own.txt": b"uploaded\n"}
    assert (await asyncart.audit(store=store, read_data=True)).ok
