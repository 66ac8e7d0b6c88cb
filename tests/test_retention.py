"""Lifecycle rules (asyncart/_retention.py): versions' ttl and collections' retention rules,
applied by ``apply_retention`` and by ``gc``, on the local store, through a real server and on
PostgreSQL + S3. Ages are judged at an explicit ``now``: nothing here waits for time to pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest
from _serving import Server
from _where import EVERY, THREE, Where, blobs, stores

import asyncart
from asyncart import DeletedError, InvalidInputError, NotFoundError
from asyncart._backends.local import LocalStore
from asyncart._domain.events import RetentionSet, VersionCommitted, decode, encode
from asyncart._repository import checkpointed, collection_stream

DAY = 86400.0
STREAM = collection_stream("demo", "ds")


@pytest.fixture(params=THREE)
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Where]:
    """A fresh local store, the same through a real server, or PostgreSQL + S3."""
    yield from stores(request, tmp_path)


@pytest.fixture(params=EVERY)
def collectable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Where]:
    """A store gc collects: local, PostgreSQL + S3, or either behind a real server (with an
    admin token)."""
    yield from stores(request, tmp_path)


async def _save(
    where: Where,
    tmp_path: Path,
    text: str,
    *,
    name: str = "ds",
    aliases: list[str] = (),
    ttl: timedelta | None = None,
) -> asyncart.Artifact:
    path = tmp_path / f"{name}-{text}.txt"
    path.write_text(text)
    artifact = asyncart.Artifact(name, "dataset")
    await artifact.add_file(str(path), name="f.txt")
    artifact.ttl = ttl
    return await artifact.save("demo", where.store, token=where.token, aliases=list(aliases))


def _api(where: Where) -> asyncart.Api:
    return asyncart.Api("demo", where.store, where.token)


async def _live(where: Where, name: str = "ds") -> list[str]:
    newest_first = await _api(where).artifact_versions(name)
    return [a.version or "" for a in reversed(newest_first)]


async def _apply(where: Where, now: float, **kw: object) -> asyncart.RetentionReport:
    return await asyncart.apply_retention(
        "demo", now=now, store=where.store, token=where.token, **kw
    )


# -- ttl ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, why",
    [
        (timedelta(days=-1), "positive"),
        (timedelta(0), "positive"),
        (30, "not int"),
        ("30d", "not str"),
        (1.5, "not float"),
    ],
)
def test_a_bad_ttl_is_refused(bad: object, why: str) -> None:
    draft = asyncart.Artifact("ds", "dataset")
    with pytest.raises(InvalidInputError, match=f"ttl must be .*{why}") as info:
        draft.ttl = bad  # type: ignore[assignment]
    assert isinstance(info.value, asyncart.AsyncartError)
    assert draft.ttl is None


async def test_ttl_is_stored_read_back_and_inherited(where: Where, tmp_path: Path) -> None:
    assert asyncart.Artifact("ds", "dataset").ttl is None
    v0 = await _save(where, tmp_path, "zero", ttl=timedelta(days=30))
    assert v0.ttl == timedelta(days=30)
    assert (await _api(where).artifact("ds:v0")).ttl == timedelta(days=30)  # from the log
    draft = v0.new_draft()
    assert draft.ttl == timedelta(days=30)  # as W&B does
    (tmp_path / "g.txt").write_text("more")
    await draft.add_file(str(tmp_path / "g.txt"))
    v1 = await draft.save()
    assert (await _api(where).artifact("ds:v1")).ttl == timedelta(days=30)
    other = v1.new_draft()
    other.ttl = None
    other.remove("g.txt")
    (tmp_path / "h.txt").write_text("other")
    await other.add_file(str(tmp_path / "h.txt"))
    v2 = await other.save()
    assert (v2.ttl, (await _api(where).artifact("ds:v2")).ttl) == (None, None)
    entries = await _api(where).history("ds")
    assert any(", ttl 30d" in e.summary for e in entries if e.kind == "version.committed")


async def test_a_distributed_version_takes_the_finishers_ttl(tmp_path: Path) -> None:
    where = Where(str(tmp_path / "store"))
    (tmp_path / "part").write_text("a shard")
    async with asyncart.init(project="demo", store=where.store, group="g") as run:
        shard = asyncart.Artifact("ds", "dataset")
        await shard.add_file(str(tmp_path / "part"))
        await run.upsert_artifact(shard)
        last = asyncart.Artifact("ds", "dataset")
        last.ttl = timedelta(hours=3)
        finished = await run.finish_artifact(last)
    assert finished.ttl == timedelta(hours=3)
    report = await _apply(where, v0_time(finished) + 4 * 3600)
    assert [(d.version, d.reason) for d in report.deleted] == [(0, "ttl expired")]


def test_a_record_written_before_ttl_decodes_without_one() -> None:
    old = {"kind": "version.committed", "draft": "d", "version": 0, "digest": "0" * 64}
    body = {**old, "file_count": 0, "size": 0, "snapshot": None, "aliases": []}
    envelope = {
        "stream": STREAM,
        "seq": 2,
        "time": 1.0,
        "actor": "user:a",
        "prev": "",
        "body": body,
    }
    record = decode(msgspec.msgpack.encode(envelope), STREAM, 2)
    assert isinstance(record.body, VersionCommitted) and record.body.ttl is None
    ttl = msgspec.structs.replace(record.body, ttl=DAY)
    assert decode(encode(msgspec.structs.replace(record, body=ttl)), STREAM, 2).body == ttl


async def test_checkpoints_carry_ttl_and_the_retention_rule(tmp_path: Path) -> None:
    where = Where(str(tmp_path / "store"))
    await _save(where, tmp_path, "zero", ttl=timedelta(hours=2))
    await asyncart.set_retention("demo/ds", keep_last=30, store=where.store)
    for i in range(25):  # past a checkpoint boundary (about 3 records a version)
        await _save(where, tmp_path, f"v{i + 1}")
    log = LocalStore(where.store).log
    assert await log.checkpoint(STREAM) is not None
    state = await checkpointed(log, STREAM)
    assert state.head > 64
    assert state.versions[0].commit.ttl == 7200.0
    assert state.retention == RetentionSet(30, None, True)


async def test_a_format_2_checkpoint_that_skipped_a_rule_is_folded_again(tmp_path: Path) -> None:
    import blake3

    from asyncart._domain.checkpoint import _MAGIC, decode_checkpoint
    from asyncart._domain.events import record_hash
    from asyncart._domain.fold import CollectionState, Unknown, fold
    from asyncart._history import read_records

    where = Where(str(tmp_path / "store"))
    await _save(where, tmp_path, "one")
    await asyncart.set_retention("demo/ds", keep_last=3, store=where.store)
    store = LocalStore(where.store)
    records = await read_records(store, STREAM)
    old = fold(CollectionState(STREAM), records[:-1])  # as a release before rules folded it
    old.unknown.append(Unknown(len(records) - 1, "retention.set"))
    old.head, old.last_hash = len(records), record_hash((await store.log.read(STREAM))[-1])
    body = msgspec.msgpack.encode({"format": 2, "state": old})
    data = _MAGIC + blake3.blake3(body).digest() + body
    with pytest.raises(asyncart.IntegrityError, match="has format 2, older than 3"):
        decode_checkpoint(data, STREAM)
    await store.log.put_checkpoint(STREAM, data)
    assert (await checkpointed(store.log, STREAM)).head == 0  # ignored: folded from seq 0
    rules = await asyncart.retention_rules(store=where.store)
    assert rules == {"demo/ds": asyncart.RetentionRule(keep_last=3)}


# -- expiry by gc ---------------------------------------------------------------------------


async def test_gc_applies_ttl_and_retention_rules_then_collects_their_blobs(
    collectable: Where, tmp_path: Path
) -> None:
    """gc first deletes what versions' ttl and retention rules let go, so that the blobs only
    those versions held go in the same run; ages are judged at the collector's clock (the
    server's) unless ``now`` is given."""
    where = collectable
    v0 = await _save(where, tmp_path, "expires", aliases=["best"], ttl=timedelta(days=1))
    await _save(where, tmp_path, "stays")
    await _save(where, tmp_path, "brief", name="brief", ttl=timedelta(microseconds=1))
    for i in range(3):
        await _save(where, tmp_path, f"r{i}", name="ruled")
    await asyncart.set_retention("demo/ruled", keep_last=1, store=where.store, token=where.token)
    before = await blobs(where)

    first = await _gc(where, grace=0)  # now: brief's ttl passed, ds:v0's (a day) has not
    assert (first.versions_expired, first.versions_retention) == (1, 2)
    assert (first.blobs_removed, first.bytes_removed) == (3, len("brief") + 2 * len("r0"))
    assert len(await blobs(where)) == len(before) - 3
    assert (await _live(where, "brief"), await _live(where, "ruled")) == ([], ["v2"])

    later = v0_time(v0) + 2 * DAY
    dry = await _gc(where, grace=0, dry_run=True, now=later)
    assert (dry.dry_run, dry.versions_expired, dry.versions_retention) == (True, 1, 0)
    assert dry.blobs_removed == 0  # a dry run deletes no version, so their blobs stay marked
    assert len(await blobs(where)) == len(before) - 3 and await _live(where) == ["v0", "v1"]

    report = await _gc(where, grace=0, now=later)
    assert (report.versions_expired, report.versions_retention) == (1, 0)
    assert (report.blobs_removed, report.bytes_removed) == (1, len("expires"))  # same run
    assert len(await blobs(where)) == len(before) - 4
    with pytest.raises(DeletedError, match="v0 was deleted by user:asyncart-gc"):
        await _api(where).artifact("ds:v0")
    with pytest.raises(NotFoundError):  # expired with its alias (as W&B deletes it)
        await _api(where).artifact("ds:best")
    (entry,) = [e for e in await _api(where).history("ds") if e.kind == "version.deleted"]
    assert entry.data["reason"] == "ttl expired" and entry.actor.startswith("user:asyncart-gc")
    assert entry.summary == "deleted v0 and its aliases best (ttl expired)"
    out = await (await _api(where).artifact("ds:latest")).download(str(tmp_path / "out"))
    assert (Path(out) / "f.txt").read_text() == "stays"
    audit = await asyncart.audit(store=where.store, token=where.admin, read_data=True)
    assert audit.ok, audit.problems
    gone = ["demo/brief:v0", "demo/ds:v0", "demo/ruled:v0", "demo/ruled:v1"]
    assert sorted(audit.deleted) == gone


async def _gc(where: Where, **kw: object) -> asyncart.GcReport:
    return await asyncart.gc(store=where.store, token=where.admin, **kw)  # type: ignore[arg-type]


def v0_time(artifact: asyncart.Artifact) -> float:
    assert artifact.created_at is not None
    return artifact.created_at.timestamp() + 1.0  # past the commit, far from the ttl


# -- retention rules ------------------------------------------------------------------------


async def _five(where: Where, tmp_path: Path) -> list[asyncart.Artifact]:
    """v0..v4, v1 with the alias ``best``."""
    return [
        await _save(where, tmp_path, f"n{i}", aliases=["best"] if i == 1 else []) for i in range(5)
    ]


async def test_keep_last_keeps_the_newest_and_the_aliased(where: Where, tmp_path: Path) -> None:
    saved = await _five(where, tmp_path)
    names = await asyncart.set_retention(
        "demo/ds", keep_last=2, store=where.store, token=where.token
    )
    assert names == ["demo/ds"]
    rules = await asyncart.retention_rules("demo", store=where.store, token=where.token)
    assert rules == {"demo/ds": asyncart.RetentionRule(keep_last=2)}
    now = time.time() + DAY

    dry = await _apply(where, now, dry_run=True)
    assert [(d.version, d.reason) for d in dry.deleted] == [
        (0, "retention: keep last 2, keep aliased"),
        (2, "retention: keep last 2, keep aliased"),
    ]
    assert (dry.versions_retention, dry.versions_expired) == (2, 0)
    assert await _live(where) == [f"v{i}" for i in range(5)]  # a dry run deletes nothing

    report = await _apply(where, now)
    assert [d.version for d in report.deleted] == [0, 2]
    assert await _live(where) == ["v1", "v3", "v4"]
    (entry, _) = [e for e in await _api(where).history("ds") if e.kind == "version.deleted"]
    assert entry.data["reason"] == "retention: keep last 2, keep aliased"
    assert (await _apply(where, now)).deleted == []  # nothing more to take

    await asyncart.set_retention(
        "demo/ds", keep_last=2, keep_aliased=False, store=where.store, token=where.token
    )
    report = await _apply(where, now)
    assert [(d.version, d.aliases) for d in report.deleted] == [(1, ["best"])]
    assert await _live(where) == ["v3", "v4"]
    with pytest.raises(NotFoundError):
        await _api(where).artifact("ds:best")
    assert saved[4].version == "v4"
    audit = await asyncart.audit("demo", store=where.store, token=where.token)
    assert audit.ok, audit.problems


async def test_older_than_deletes_only_old_versions_without_aliases(
    where: Where, tmp_path: Path
) -> None:
    saved = await _five(where, tmp_path)
    await asyncart.set_retention(
        "demo/ds", older_than=timedelta(days=30), store=where.store, token=where.token
    )
    times = [a.created_at.timestamp() for a in saved if a.created_at]
    between = (times[2] + times[3]) / 2  # v0..v2 are 30 days old then, v3 and v4 are not
    assert (await _apply(where, between + 29 * DAY)).deleted == []
    report = await _apply(where, between + 30 * DAY)
    assert [(d.version, d.reason) for d in report.deleted] == [
        (0, "retention: older than 30d, keep aliased"),
        (2, "retention: older than 30d, keep aliased"),
    ]
    assert await _live(where) == ["v1", "v3", "v4"]
    everything_old = times[4] + 365 * DAY
    assert [d.version for d in (await _apply(where, everything_old)).deleted] == [3]
    assert await _live(where) == ["v1", "v4"]  # the aliased, and the newest (latest)

    await asyncart.set_retention(  # keep_last is a floor under older_than
        "demo/ds",
        keep_last=1,
        older_than=timedelta(days=1),
        keep_aliased=False,
        store=where.store,
        token=where.token,
    )
    assert [d.version for d in (await _apply(where, everything_old)).deleted] == [1]
    assert await _live(where) == ["v4"]
    assert (await asyncart.audit("demo", store=where.store, token=where.token)).ok


async def test_a_project_rule_is_set_on_each_collection_and_can_be_cleared(
    where: Where, tmp_path: Path
) -> None:
    for name in ("ds", "model"):
        for i in range(3):
            await _save(where, tmp_path, f"{name}{i}", name=name)
    names = await asyncart.set_retention("demo", keep_last=1, store=where.store, token=where.token)
    assert sorted(names) == ["demo/ds", "demo/model"]
    report = await _apply(where, time.time())
    assert (report.collections, report.versions_retention) == (2, 4)
    assert (await _live(where), await _live(where, "model")) == (["v2"], ["v2"])

    await asyncart.set_retention("demo/ds", store=where.store, token=where.token)  # cleared
    rules = await asyncart.retention_rules(store=where.store, token=where.token)
    assert list(rules) == ["demo/model"]
    entries = await _api(where).history("ds")
    assert entries[-1].summary == "cleared the retention rule"


async def test_apply_retention_expires_ttl_too(where: Where, tmp_path: Path) -> None:
    await _save(where, tmp_path, "long", ttl=timedelta(days=7))
    v1 = await _save(where, tmp_path, "short", ttl=timedelta(hours=1))
    report = await _apply(where, v0_time(v1) + 2 * 3600)
    assert [(d.version, d.reason) for d in report.deleted] == [(1, "ttl expired")]
    assert report.versions_expired == 1
    assert await _live(where) == ["v0"]
    assert (await _api(where).artifact("ds:latest")).version == "v0"  # latest moved back


async def test_expired_versions_go_first_and_the_rule_judges_the_rest(tmp_path: Path) -> None:
    where = Where(str(tmp_path / "store"))
    await _save(where, tmp_path, "a")
    await _save(where, tmp_path, "b")
    v2 = await _save(where, tmp_path, "c", ttl=timedelta(hours=1))
    await asyncart.set_retention("demo/ds", keep_last=2, store=where.store)
    early = await _apply(where, v0_time(v2), dry_run=True)  # before v2 expires: v0 would go
    assert [d.version for d in early.deleted] == [0]
    report = await _apply(where, v0_time(v2) + 2 * 3600)
    assert [(d.version, d.reason) for d in report.deleted] == [(2, "ttl expired")]
    assert await _live(where) == ["v0", "v1"]  # the last 2 of those left


@pytest.mark.parametrize(
    "kw, why",
    [
        ({"keep_last": 0}, "keep_last must be an int of 1 or more"),
        ({"keep_last": True}, "keep_last must be an int"),
        ({"older_than": 30.0}, "older_than must be a datetime.timedelta"),
        ({"older_than": timedelta(days=-1)}, "older_than must be positive"),
        ({"keep_last": 1, "keep_aliased": "no"}, "keep_aliased must be a bool"),
    ],
)
async def test_bad_rules_are_refused(tmp_path: Path, kw: dict[str, object], why: str) -> None:
    with pytest.raises(InvalidInputError, match=why):
        await asyncart.set_retention("demo/ds", store=str(tmp_path), **kw)  # type: ignore[arg-type]


async def test_a_rule_needs_an_existing_collection(where: Where, tmp_path: Path) -> None:
    await _save(where, tmp_path, "one")
    with pytest.raises(NotFoundError, match="demo/nothing not found"):
        await asyncart.set_retention(
            "demo/nothing", keep_last=1, store=where.store, token=where.token
        )


def test_the_server_refuses_a_bad_rule_or_ttl() -> None:
    from asyncart._server._validate import _check_body

    _check_body(STREAM, RetentionSet(3, DAY, False))
    for bad in [RetentionSet(0), RetentionSet(None, -1.0), RetentionSet(None, float("nan"))]:
        with pytest.raises(InvalidInputError):
            _check_body(STREAM, bad)
    with pytest.raises(InvalidInputError, match="ttl must be positive"):
        _check_body(STREAM, VersionCommitted("d", 0, "0" * 64, 0, 0, ttl=0.0))


@pytest.fixture
def tokens(server: Server) -> tuple[str, str]:
    """A write token and a read token of project demo."""
    return server.token("demo", write=True), server.token("demo")


async def test_over_http_a_bad_rule_is_refused_and_a_read_token_cannot_set_one(
    server: Server, tokens: tuple[str, str], tmp_path: Path
) -> None:
    import aiohttp
    from _records import chain

    from asyncart._backends._wire import pack
    from asyncart._backends.http import HttpStore
    from asyncart._domain.events import record_hash

    where = Where(server.url, tokens[0])
    await _save(where, tmp_path, "one")
    async with HttpStore(where.store, where.token) as store:
        stored = await store.log.read(STREAM)
    url = f"{where.store}/v1/log/{STREAM}?expected_seq={len(stored)}"
    headers = {"Authorization": f"Bearer {where.token}", "Content-Type": "application/msgpack"}
    async with aiohttp.ClientSession() as session:
        for body in [RetentionSet(0), RetentionSet(None, -DAY)]:
            records = chain(STREAM, [body], len(stored), record_hash(stored[-1]))
            async with session.post(url, data=pack(records), headers=headers) as response:
                assert response.status == 400, await response.read()
    async with HttpStore(where.store, where.token) as store:
        assert await store.log.read(STREAM) == stored  # nothing stored
    with pytest.raises(asyncart.AccessDeniedError):
        await asyncart.set_retention("demo/ds", keep_last=1, store=where.store, token=tokens[1])
    assert await asyncart.retention_rules(store=where.store, token=where.token) == {}


# -- the command line -----------------------------------------------------------------------

ASYNCART = shutil.which("asyncart", path=str(Path(sys.executable).parent))


def _cli(store: str, *args: str) -> subprocess.CompletedProcess[str]:
    assert ASYNCART, "the asyncart console script is not installed (pip install -e .)"
    env = {**os.environ, asyncart.STORE_ENV: store}
    return subprocess.run([ASYNCART, *args], capture_output=True, text=True, env=env, timeout=60)


def _ok(store: str, *args: str) -> str:
    done = _cli(store, *args)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


async def test_the_retention_command(tmp_path: Path) -> None:
    where = Where(str(tmp_path / "store"))
    for i in range(3):
        await _save(where, tmp_path, f"c{i}")
    await _save(where, tmp_path, "t", name="model", ttl=timedelta(hours=1))
    out = _ok(where.store, "retention", "set", "demo/ds", "--keep-last", "1", "--json")
    assert json.loads(out) == {
        "collections": ["demo/ds"],
        "rule": {"keep_last": 1, "older_than": None, "keep_aliased": True},
    }
    shown = _ok(where.store, "retention", "show")
    assert shown == "demo/ds: keep last 1, keep aliased\n"
    assert json.loads(_ok(where.store, "retention", "show", "demo", "--json")) == {
        "demo/ds": {"keep_last": 1, "older_than": None, "keep_aliased": True}
    }
    later = f"@{time.time() + 2 * 3600}"
    dry = json.loads(_ok(where.store, "retention", "apply", "--dry-run", "--now", later, "--json"))
    assert (dry["dry_run"], dry["versions_expired"], dry["versions_retention"]) == (True, 1, 2)
    assert sorted((d["name"], d["version"]) for d in dry["deleted"]) == [
        ("ds", 0),
        ("ds", 1),
        ("model", 0),
    ]
    assert await _live(where) == ["v0", "v1", "v2"]
    text = _ok(where.store, "retention", "apply", "demo", "--now", later)
    assert "deleted demo/ds:v0 (retention: keep last 1, keep aliased)" in text
    assert "deleted demo/model:v0 (ttl expired)" in text
    assert "deleted 3 versions (1 by their ttl, 2 by retention rules) in 2 collections" in text
    assert await _live(where) == ["v2"] and await _live(where, "model") == []
    cleared = _ok(where.store, "retention", "set", "demo/ds", "--clear")
    assert cleared == "set no retention rule on demo/ds\n"
    assert _ok(where.store, "retention", "show") == "no retention rules\n"
    done = _cli(where.store, "retention", "set", "demo/ds")
    assert done.returncode == 1 and "--keep-last N and/or --older-than" in done.stderr
    done = _cli(where.store, "retention", "set", "demo/ds", "--keep-last", "0")
    assert done.returncode == 1 and "keep_last must be an int of 1 or more" in done.stderr
    assert (await asyncart.audit(store=where.store)).ok


async def test_the_gc_command_says_what_rules_deleted(tmp_path: Path) -> None:
    where = Where(str(tmp_path / "store"))
    await _save(where, tmp_path, "brief", ttl=timedelta(microseconds=1))
    dry = json.loads(_ok(where.store, "gc", "--dry-run", "--grace", "0", "--json"))
    assert (dry["versions_expired"], dry["versions_retention"], dry["blobs_removed"]) == (1, 0, 0)
    text = _ok(where.store, "gc", "--grace", "0")
    assert "removed 1 blobs" in text
    assert text.strip().endswith("first deleted 1 versions (1 by their ttl, 0 by retention rules)")
    assert await _live(where) == []
