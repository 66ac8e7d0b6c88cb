"""No input can brick a stream: values are checked before any append, and reads survive records
they cannot use (a clear IntegrityError, or an unknown kind that is skipped and reported)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

import asyncart
from asyncart._backends.local import LocalStore
from asyncart._domain.events import record_hash
from asyncart._domain.manifest import Manifest
from asyncart._values import MAX_BYTES, MAX_DEPTH

PROJECT, NAME = "demo", "ds"
STREAM = f"{PROJECT}/artifacts/{NAME}"


def nested(depth: int) -> dict[str, Any]:
    root: dict[str, Any] = {}
    node = root
    for _ in range(depth - 1):
        node["a"] = {}
        node = node["a"]
    return root


async def records(store: str) -> int:
    """How many records the project's streams hold (all of them, runs included)."""
    log = LocalStore(store).log
    return sum([len(await log.read(s)) for s in await log.streams(f"{PROJECT}/")])


async def save_v0(store: str, files: Path, **kwargs: Any) -> asyncart.Artifact:
    artifact = asyncart.Artifact(NAME, "dataset", **kwargs)
    await artifact.add_file(files / "a.txt")
    return await artifact.save(PROJECT, store)


# -- refused when given ------------------------------------------------------------------


class Opaque:
    pass


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        (dict(metadata={1: "x"}), "keys must be str"),
        (dict(metadata={"o": Opaque()}), "metadata['o'] is a Opaque"),
        (dict(metadata={"a": [0, 1, 2, math.inf]}), "metadata['a'][3] is inf"),
        (dict(metadata={"a": {"b": -math.inf}}), "metadata['a']['b'] is -inf"),
        (dict(metadata={"n": 2**64}), "metadata['n'] = 18446744073709551616 is out of range"),
        (dict(metadata={"s": "\ud800"}), "metadata['s'] is not valid Unicode"),
        (dict(metadata=nested(10_000)), f"nests more than {MAX_DEPTH} levels"),
        (dict(metadata={"big": "x" * (MAX_BYTES + 1)}), "bytes encoded"),
        (dict(metadata=["not", "a", "dict"]), "metadata must be a dict"),
        (dict(description=123), "description must be a str"),
    ],
)
async def test_bad_metadata_or_description_is_refused_at_the_call(
    store: str, files: Path, kwargs: dict[str, Any], named: str
) -> None:
    await save_v0(store, files)
    before = await records(store)
    with pytest.raises(asyncart.InvalidInputError, match=named.replace("[", r"\[")):
        asyncart.Artifact(NAME, "dataset", **kwargs)
    assert await records(store) == before
    assert (await asyncart.Api(PROJECT, store=store).artifact(f"{NAME}:v0")).version == "v0"


@pytest.mark.parametrize(
    ("value", "named"),
    [(Opaque(), r"metadata\['late'\] is a Opaque"), (nested(MAX_DEPTH + 1), "nests more than")],
)
async def test_metadata_set_after_construction_is_checked_before_any_append(
    store: str, files: Path, value: Any, named: str
) -> None:
    """``artifact.metadata[...] = ...`` works (as in W&B), so the value is checked at commit."""
    v0 = await save_v0(store, files)
    before = await records(store)
    draft = v0.new_draft()
    draft.metadata["late"] = value
    await draft.add_file(files / "b.txt")
    with pytest.raises(asyncart.InvalidInputError, match=named):
        await draft.save()
    async with asyncart.init(project=PROJECT, store=store) as run:
        distributed = asyncart.Artifact(NAME, "dataset")
        distributed.description = 5  # type: ignore[assignment]
        with pytest.raises(asyncart.InvalidInputError, match="description must be a str"):
            await run.upsert_artifact(distributed, "job")
    assert await records(store) == before + 2  # the run's start and finish only
    assert len(await asyncart.Api(PROJECT, store=store).artifact_versions(NAME)) == 1


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        (dict(config={1: 2}), "config has the key 1"),
        (dict(config={"lr": math.nan, "x": [math.inf]}), r"config\['x'\]\[0\] is inf"),
        (dict(config={"deep": nested(10_000)}), "nests more than"),
        (dict(config={"f": print}), r"config\['f'\] is a builtin_function_or_method"),
        (dict(job_type=5), "invalid job_type 5"),
        (dict(job_type="no spaces"), "invalid job_type 'no spaces'"),
    ],
)
async def test_bad_config_or_job_type_is_refused_before_the_run_starts(
    store: str, files: Path, kwargs: dict[str, Any], named: str
) -> None:
    await save_v0(store, files)
    before = await records(store)
    with pytest.raises(asyncart.InvalidInputError, match=named):
        asyncart.init(project=PROJECT, store=store, **kwargs)
    assert await records(store) == before  # no run stream was started


async def test_values_are_copied_and_nan_is_stored_as_null(store: str, files: Path) -> None:
    metadata: dict[str, Any] = {"loss": math.nan, "tags": ("a", "b"), "nested": {"k": [1, 2.5]}}
    config: dict[str, Any] = {"lr": math.nan, "layers": [64, 64]}
    artifact = asyncart.Artifact(NAME, "dataset", metadata=metadata, description="d")
    metadata["nested"]["k"].append("changed after the call")
    await artifact.add_file(files / "a.txt")
    run = asyncart.init(project=PROJECT, store=store, job_type="train", config=config)
    config["layers"].append(1)
    async with run:
        saved = await run.log_artifact(artifact)
    loaded = await asyncart.Api(PROJECT, store=store).artifact(NAME)
    expected = {"loss": None, "tags": ["a", "b"], "nested": {"k": [1, 2.5]}}
    assert saved.metadata == loaded.metadata == expected
    assert loaded.description == "d"
    loaded.metadata["nested"]["k"].append(3)  # a loaded artifact's dict is its own copy
    assert (await asyncart.Api(PROJECT, store=store).artifact(NAME)).metadata == expected
    started = [
        e for e in await asyncart.Api(PROJECT, store=store).history() if e.kind == "run.started"
    ]
    assert started[0].data["config"] == {"lr": None, "layers": [64, 64]}
    assert started[0].data["job_type"] == "train"


# -- records this release cannot use -------------------------------------------------------


async def append_raw(store: str, stream: str, body: dict[str, Any]) -> int:
    """Append a hand-encoded record with a valid chain link, as another writer could."""
    log = LocalStore(store).log
    payloads = await log.read(stream)
    record = {
        "stream": stream,
        "seq": len(payloads),
        "time": time.time(),
        "actor": "user:newer-release",
        "prev": record_hash(payloads[-1]) if payloads else "",
        "body": body,
    }
    await log.append(stream, [msgspec.msgpack.encode(record)], len(payloads))
    return len(payloads)


async def test_a_record_of_an_unknown_kind_is_skipped_and_reported(store: str, files: Path) -> None:
    await save_v0(store, files, metadata={"k": 1})
    seq = await append_raw(store, STREAM, {"kind": "version.retired", "version": 0, "why": "x"})
    draft = (await asyncart.Api(PROJECT, store=store).artifact(NAME)).new_draft()
    await draft.add_file(files / "b.txt")
    v1 = await draft.save()  # writing after it works too
    assert v1.version == "v1"

    api = asyncart.Api(PROJECT, store=store)
    assert (await api.artifact(f"{NAME}:v0")).metadata == {"k": 1}
    assert sorted((await api.artifact(f"{NAME}:latest")).manifest.entries) == ["a.txt", "b.txt"]
    assert [v.version for v in await api.artifact_versions(NAME)] == ["v1", "v0"]

    [entry] = [e for e in await api.history(NAME) if e.seq == seq]
    assert (entry.kind, dict(entry.data)) == ("version.retired", {"version": 0, "why": "x"})
    assert "does not know" in entry.summary
    assert any(e.kind == "version.retired" for e in await api.history())

    report = await asyncart.audit(PROJECT, store=store)
    assert [(p.stream, p.seq) for p in report.problems] == [(STREAM, seq)], str(report)
    assert "'version.retired'" in report.problems[0].message
    assert report.versions == 2


async def test_an_unknown_kind_in_a_run_stream_leaves_the_run_readable(store: str) -> None:
    async with asyncart.init(project=PROJECT, store=store, id="r1", job_type="eval"):
        pass
    await append_raw(store, f"{PROJECT}/runs/r1", {"kind": "run.heartbeat"})
    info = await asyncart.Api(PROJECT, store=store).run("r1")
    assert info.job_type == "eval"


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "metadata.set", "draft": "d", "metadata": {1: "x"}},  # what old releases took
        {"kind": "files.added", "draft": 5, "entries": []},
        {"kind": "version.committed", "draft": "d"},  # required fields missing
        {"no": "kind"},
    ],
)
async def test_a_record_that_does_not_decode_is_an_integrity_error_naming_stream_and_seq(
    store: str, files: Path, body: dict[str, Any]
) -> None:
    await save_v0(store, files)
    seq = await append_raw(store, STREAM, body)
    where = rf"stream '{STREAM}' seq {seq}: the record does not decode"
    api = asyncart.Api(PROJECT, store=store)
    with pytest.raises(asyncart.IntegrityError, match=where):
        await api.artifact(NAME)
    with pytest.raises(asyncart.IntegrityError, match=where):
        await api.history()
    report = await asyncart.audit(PROJECT, store=store)
    assert [(p.stream, p.seq) for p in report.problems] == [(STREAM, seq)], str(report)


async def test_records_that_are_not_msgpack_are_an_integrity_error(store: str, files: Path) -> None:
    await save_v0(store, files)
    log = LocalStore(store).log
    seq = len(await log.read(STREAM))
    await log.append(STREAM, [b"\xc1 not msgpack"], seq)
    with pytest.raises(asyncart.IntegrityError, match=rf"'{STREAM}' seq {seq}: the record does"):
        await asyncart.Api(PROJECT, store=store).artifact(NAME)


def test_a_snapshot_that_does_not_decode_is_an_integrity_error() -> None:
    with pytest.raises(asyncart.IntegrityError, match="snapshot abc of v3 does not decode"):
        Manifest.from_snapshot(b"\x92\x01", "snapshot abc of v3")
