"""Registry links (a version.linked record: a version whose files are another collection's
version's), on the local store, through a server and on PostgreSQL + S3; with the lineage,
gc, audit, checkpoints and token scope they touch. Also ``use_artifact(draft)`` and ttl edits
of committed versions (issue 11, "Versions")."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from _serving import Server

import asyncart
from asyncart import InvalidInputError
from asyncart._backends.http import HttpStore
from asyncart._backends.local import LocalStore
from asyncart._domain.checkpoint import decode_checkpoint, encode_checkpoint
from asyncart._domain.events import CollectionCreated, VersionEdited, VersionLinked
from asyncart._domain.manifest import Manifest
from asyncart._repository import Repository, checkpointed

FILES = {"model.bin": b"weights " * 100, "config.json": b'{"lr": 0.1}'}


@dataclass
class Where:
    store: str
    token: str | None = None  # writes projects demo and reg
    admin: str | None = None


@pytest.fixture(params=["local", "http", "pg"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Where]:
    """A fresh local store, the same through a real server, or PostgreSQL + S3."""
    if request.param == "pg":
        yield Where(request.getfixturevalue("pg_s3_store"))
    elif request.param == "http":
        server = Server(tmp_path / "served").start()
        try:
            yield Where(
                server.url, server.token("demo", "reg", write=True), server.token(admin=True)
            )
        finally:
            server.stop()
    else:
        yield Where(str(tmp_path / "store"))


async def _model(root: Path, files: dict[str, bytes] = FILES) -> asyncart.Artifact:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    artifact = asyncart.Artifact("model", "model", metadata={"acc": 0.9})
    await artifact.add_dir(root)
    return artifact


def _api(where: Where) -> asyncart.Api:
    return asyncart.Api("demo", where.store, where.token)


async def test_link_resolve_download_twice_and_lineage(where: Where, tmp_path: Path) -> None:
    async with asyncart.init("demo", id="trainer", store=where.store, token=where.token) as run:
        v0 = await run.log_artifact(await _model(tmp_path / "m0"))
        linked = await run.link_artifact(v0, "reg/models", aliases=["staging"])
    assert (linked.qualified_name, linked.is_link) == ("reg/models:v0", True)
    assert (linked.source_project, linked.source_name, linked.source_version) == (
        "demo",
        "model:v0",
        "v0",
    )
    assert not v0.is_link and v0.source_name == "model:v0"
    assert linked.digest == v0.digest and linked.metadata == {"acc": 0.9}

    for ref in ("reg/models:latest", "reg/models:v0", "reg/models:staging"):
        got = await _api(where).artifact(ref)
        assert (got.qualified_name, got.source_name) == ("reg/models:v0", "model:v0"), ref
    root = await got.download(tmp_path / "out")
    assert {p.name: p.read_bytes() for p in root.iterdir()} == FILES
    who = await got.logged_by()
    assert who is not None and (who.id, who.project) == ("trainer", "demo")
    [entry] = [e for e in await _api(where).history("models", "reg") if e.kind == "version.linked"]
    assert entry.summary.startswith("linked v0 to demo/model:v0")
    assert entry.actor.startswith("run:trainer")

    # the same source again: no new version, the alias moves to the link there
    again = await v0.link("reg/models", aliases=["prod"])
    assert again.version == "v0" and {"staging", "prod"} <= set(again.aliases)
    v1 = await (await _model(tmp_path / "m1", {"model.bin": b"better"})).save(
        "demo", where.store, token=where.token
    )
    link1 = await v1.link("reg/models", aliases=["prod"])  # moves prod on to the new link
    assert (link1.version, link1.source_name) == ("v1", "model:v1")
    assert (await _api(where).artifact("reg/models:prod")).source_version == "v1"
    assert (await _api(where).artifact("reg/models")).version == "v1"  # latest
    # a link of a link links its source
    again = await link1.link("reg/other")
    assert again.source_name == "model:v1"
    assert sorted(a.qualified_name for a in await v1.linked_artifacts()) == [
        "reg/models:v1",
        "reg/other:v0",
    ]
    assert [a.qualified_name for a in await v0.linked_artifacts()] == ["reg/models:v0"]

    with pytest.raises(InvalidInputError, match="in demo/model already"):
        await v0.link("model")
    with pytest.raises(InvalidInputError, match="pass aliases"):
        await v0.link("reg/models:prod")
    other = asyncart.Artifact("models", "dataset")
    (tmp_path / "d.txt").write_text("data")
    await other.add_file(tmp_path / "d.txt")
    await other.save("demo", where.store, token=where.token)
    with pytest.raises(InvalidInputError, match="of type 'dataset', not 'model'"):
        await v0.link("demo/models")
    report = await asyncart.audit(store=where.store, token=where.admin or where.token)
    assert report.ok, report.problems


@pytest.fixture(params=["local", "http"])
def swept(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Where]:
    """A store a gc can sweep from here: local, or through a server with an admin token."""
    if request.param == "http":
        server = Server(tmp_path / "served").start()
        try:
            yield Where(
                server.url, server.token("demo", "reg", write=True), server.token(admin=True)
            )
        finally:
            server.stop()
    else:
        yield Where(str(tmp_path / "store"))


async def test_a_link_outlives_its_deleted_source(swept: Where, tmp_path: Path) -> None:
    """The collector marks a live link's files although only a deleted version has them."""
    where = swept
    v0 = await (await _model(tmp_path / "m0")).save("demo", where.store, token=where.token)
    await v0.link("reg/models")
    await (await _model(tmp_path / "m1", {"other.bin": b"v1"})).save(
        "demo", where.store, token=where.token
    )
    await v0.delete()
    report = await asyncart.gc(store=where.store, token=where.admin, grace=0)
    assert report.blobs_removed == 0  # v0's files are the link's
    linked = await _api(where).artifact("reg/models:latest")
    root = await linked.download(tmp_path / "out")
    assert {p.name: p.read_bytes() for p in root.iterdir()} == FILES
    assert (await asyncart.audit(store=where.store, token=where.admin, read_data=True)).ok

    await linked.delete()  # now nothing live holds them
    report = await asyncart.gc(store=where.store, token=where.admin, grace=0)
    assert report.blobs_removed >= len(FILES)


async def test_audit_checks_a_link_against_its_source(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    v0 = await (await _model(tmp_path / "m0")).save("demo", store)
    await v0.link("reg/models")
    assert (await asyncart.audit(store=store)).ok
    repo = Repository(LocalStore(store))
    async with repo.store.held():
        state = await repo.collection("reg", "models")
        real = state.versions[0].link
        assert real is not None
        forged = VersionLinked(1, "demo", "model", 0, "ab" * 32, 1, 1, None, [])
        await repo.append(state, [forged], "user:forger")
        assert real.digest == v0.digest
    report = await asyncart.audit(store=store)
    assert [p.message for p in report.problems] == [
        "v1 links demo/model:v0 but records another manifest"
    ]


async def test_a_checkpoint_carries_links_and_edited_ttls(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    v0 = await (await _model(tmp_path / "m0")).save("demo", store)
    linked = await v0.link("reg/models", aliases=["prod"])
    linked.ttl = timedelta(days=2)
    await linked.save()
    repo = Repository(LocalStore(store))
    async with repo.store.held():
        state = await repo.collection("reg", "models")
        back = decode_checkpoint(encode_checkpoint(state), state.stream)
        assert back.versions[0].link == state.versions[0].link is not None
        assert back.versions[0].ttl == timedelta(days=2).total_seconds()
        assert back == state
        await repo.store.log.put_checkpoint(state.stream, encode_checkpoint(state))
        assert await checkpointed(repo.store.log, state.stream) == state  # taken, not refolded


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    served = Server(tmp_path / "served").start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def tokens(server: Server) -> dict[str, str]:
    return {
        "demo": server.token("demo", write=True),
        "reg": server.token("reg", write=True),
        "both": server.token("demo", "reg", write=True),
        "reg-read": server.token("reg"),
        "victim": server.token("victim", write=True),
    }


async def test_a_token_links_only_what_it_can_read(
    server: Server, tokens: dict[str, str], tmp_path: Path
) -> None:
    v0 = await (await _model(tmp_path / "m0")).save("demo", server.url, token=tokens["demo"])
    async with HttpStore(server.url, tokens["reg"]) as store:
        repo = Repository(store)
        state = await repo.collection("reg", "models")
        bodies = [
            CollectionCreated("models", "model"),
            VersionLinked(0, "demo", "model", 0, v0.digest, 2, v0.size, None, []),
        ]
        with pytest.raises(InvalidInputError, match="may not read project 'demo'"):
            await repo.append(state, bodies, "user:someone")
    # a token of both links; a reader of the registry alone then reads the files
    source = await asyncart.Api("demo", server.url, tokens["both"]).artifact("model:v0")
    await source.link("reg/models")
    reader = asyncart.Api("reg", server.url, tokens["reg-read"])
    root = await (await reader.artifact("models:latest")).download(tmp_path / "out")
    assert {p.name: p.read_bytes() for p in root.iterdir()} == FILES


async def test_use_artifact_logs_a_draft_and_records_the_use(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    async with asyncart.init("demo", id="r1", store=store) as run:
        draft = await _model(tmp_path / "m0")
        used = await run.use_artifact(draft)
        assert used.version == "v0" and draft.version == "v0"  # logged, as W&B does
        again = await run.use_artifact(draft)  # a committed one is only used
        assert again.version == "v0"
    users = await used.used_by()
    assert [u.id for u in users] == ["r1"]
    assert (await used.logged_by()).id == "r1"  # type: ignore[union-attr]
    assert (await asyncart.Api("demo", store).artifact("model:latest")).version == "v0"


async def test_ttl_of_a_committed_version_is_edited(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    v0 = await (await _model(tmp_path / "m0")).save("demo", store)
    assert v0.ttl is None
    v0.ttl = timedelta(hours=1)
    await v0.save()
    loaded = await asyncart.Api("demo", store).artifact("model:v0")
    assert loaded.ttl == timedelta(hours=1)
    assert loaded.new_draft().ttl == timedelta(hours=1)
    with pytest.raises(InvalidInputError):
        loaded.ttl = timedelta(0)
    loaded.ttl = None
    await loaded.save()
    assert (await asyncart.Api("demo", store).artifact("model:v0")).ttl is None
    now = loaded.created_at.timestamp() + 7200  # type: ignore[union-attr]
    assert (await asyncart.apply_retention("demo", store=store, now=now)).versions_expired == 0
    loaded.ttl = timedelta(hours=1)
    await loaded.save()
    report = await asyncart.apply_retention("demo", store=store, now=now)
    assert report.versions_expired == 1  # the edited ttl, counted from the commit
    assert (await asyncart.audit(store=store)).ok


def test_cli_link(tmp_path: Path) -> None:
    import subprocess
    import sys

    store = str(tmp_path / "store")
    data = tmp_path / "data"
    data.mkdir()
    (data / "w.bin").write_bytes(b"w")

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "asyncart", *args, "--store", store],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    cli("put", str(data), "demo/model", "--type", "model")
    shown = json.loads(cli("link", "demo/model:v0", "reg/models", "--alias", "prod", "--json"))
    assert shown["source"] == "demo/model:v0"
    assert "prod" in shown["aliases"]
    assert "reg/models:v0 links demo/model:v0" in cli("link", "demo/model:v0", "reg/models")
    assert json.loads(cli("show", "reg/models:v0", "--json"))["source"] == "demo/model:v0"
    assert "linked v0 to demo/model:v0" in cli("log", "reg/models")


async def test_copying_the_registry_project_alone_takes_the_linked_files(tmp_path: Path) -> None:
    store, copy = str(tmp_path / "store"), str(tmp_path / "copy")
    v0 = await (await _model(tmp_path / "m0")).save("demo", store)
    await v0.link("reg/models")
    await asyncart.copy_store(store, copy, project="reg")
    linked = await asyncart.Api("reg", copy).artifact("models:latest")
    root = await linked.download(tmp_path / "out")
    assert {p.name: p.read_bytes() for p in root.iterdir()} == FILES
    # the copy's audit cannot check the link against a source it lacks, and says so
    report = await asyncart.audit(store=copy, read_data=True)
    assert [p.message for p in report.problems] == ["v0 links demo/model:v0, which does not exist"]
    await asyncart.copy_store(store, copy, project="demo")
    assert (await asyncart.audit(store=copy, read_data=True)).ok


async def test_ttl_edit_is_stored_everywhere(where: Where, tmp_path: Path) -> None:
    """Through a server too: it validates the edit's ttl (0 clears, a negative is refused)."""
    v0 = await (await _model(tmp_path / "m0")).save("demo", where.store, token=where.token)
    v0.ttl = timedelta(days=3)
    await v0.save()
    assert (await _api(where).artifact("model:v0")).ttl == timedelta(days=3)
    v0.ttl = None
    await v0.save()
    assert (await _api(where).artifact("model:v0")).ttl is None
    entries = [e for e in await _api(where).history("model") if e.kind == "version.edited"]
    assert [e.summary for e in entries] == ["edited v0: ttl 3d", "edited v0: ttl (none)"]


async def test_a_server_refuses_a_negative_ttl_edit(
    server: Server, tokens: dict[str, str], tmp_path: Path
) -> None:
    await (await _model(tmp_path / "m0")).save("demo", server.url, token=tokens["demo"])
    async with HttpStore(server.url, tokens["demo"]) as store:
        repo = Repository(store)
        state = await repo.collection("demo", "model")
        with pytest.raises(InvalidInputError, match="ttl must be positive seconds"):
            await repo.append(state, [VersionEdited(0, ttl=-5.0)], "user:someone")
        await repo.append(state, [VersionEdited(0, ttl=0.0)], "user:someone")  # 0 clears


async def test_a_new_draft_of_a_link_builds_on_its_files(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    v0 = await (await _model(tmp_path / "m0")).save("demo", store)
    linked = await v0.link("reg/models")
    draft = linked.new_draft()
    (tmp_path / "extra.txt").write_text("extra")
    await draft.add_file(tmp_path / "extra.txt")
    v1 = await draft.save()
    assert (v1.qualified_name, v1.is_link) == ("reg/models:v1", False)
    fresh = Repository(LocalStore(store))  # no cached manifest: read through the link
    async with fresh.store.held():
        state, version = await fresh.version("reg", "models", 1, None)
        manifest = await fresh.manifest(state, version)
    assert sorted(manifest.entries) == ["config.json", "extra.txt", "model.bin"]
    await v0.delete()
    assert (await asyncart.gc(store=store, grace=0)).blobs_removed == 0
    root = await (await asyncart.Api("reg", store).artifact("models:v1")).download(tmp_path / "o")
    assert {p.name for p in root.iterdir()} == {"config.json", "extra.txt", "model.bin"}
    assert (await asyncart.audit(store=store, read_data=True)).ok


async def test_a_link_snapshot_must_hold_its_sources_manifest(
    server: Server, tokens: dict[str, str], tmp_path: Path
) -> None:
    """A writer makes the snapshot a link's readers read: one listing another project's blob
    beside the source's digest is refused (else a reader of the link could fetch that blob)."""
    victim = tokens["victim"]
    hidden = await _model(tmp_path / "secret", {"secret.bin": b"the victim's"})
    secret = await hidden.save("victim", server.url, token=victim)
    v0 = await (await _model(tmp_path / "m0")).save("demo", server.url, token=tokens["both"])
    forged = Manifest({**v0.manifest.entries, **secret.manifest.entries})
    forged_entry = next(iter(secret.manifest.entries.values()))
    async with HttpStore(server.url, tokens["both"]) as store:
        snapshot = await store.blobs.put_bytes(forged.to_snapshot())
        repo = Repository(store)
        for source, digest, why in [
            (0, v0.digest, "its snapshot is not its manifest"),
            (0, forged.digest, "not a live version of its digest"),
            (7, v0.digest, "not a live version of its digest"),
        ]:
            state = await repo.collection("reg", "models")
            bodies = [
                CollectionCreated("models", "model"),
                VersionLinked(0, "demo", "model", source, digest, 2, v0.size, snapshot, []),
            ]
            with pytest.raises(InvalidInputError, match=why):
                await repo.append(state, bodies, "user:someone")
    reader = HttpStore(server.url, tokens["reg-read"])
    async with reader:
        with pytest.raises(asyncart.AsyncartError):  # not the reader's to see
            await reader.blobs.get_bytes(forged_entry.digest)
