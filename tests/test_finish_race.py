"""Two real processes finishing the same distributed artifact at once, round after round.

Each round both workers upsert (or one of them does), meet at a barrier, then both call
``finish_artifact``. Exactly one version may come of a round: the slower finisher gets that
same version back when it brings nothing new, else an ``AlreadyFinishedError`` naming it.
(Before, the loser made a second version holding only its own file, or got NotFoundError.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

import asyncart

PROJECT, NAME, DID = "demo", "shards", "job-1"
ROUNDS = 12

WORKER = r"""
import asyncio, json, os, sys, time
import asyncart

args = json.loads(sys.argv[1])
me, sync = args["me"], args["sync"]


def barrier(name):
    open(os.path.join(sync, f"{name}-{me}"), "w").close()
    deadline = time.monotonic() + 60
    while len([f for f in os.listdir(sync) if f.startswith(name + "-")]) < 2:
        if time.monotonic() > deadline:
            sys.exit(f"barrier {name} never opened")
        time.sleep(0.001)


async def artifact(files):
    art = asyncart.Artifact(args["name"], "dataset")
    for rel, text in files.items():
        path = os.path.join(args["tmp"], f"{me}-{rel.replace('/', '_')}")
        with open(path, "w") as f:
            f.write(text)
        await art.add_file(path, rel)
    return art


async def main():
    mode, did = args["mode"], args["did"]
    async with asyncart.init(project="demo", store=args["store"]) as run:
        for r in range(args["rounds"]):
            if mode != "empty" or me == 0:  # in "empty" rounds one worker only upserts
                part = await artifact({f"up/{me}.txt": f"round {r} worker {me}\n"})
                await run.upsert_artifact(part, did)
            barrier(f"upserted{r}")
            last = {
                "empty": {},
                "file": {f"fin/{me}.txt": f"round {r} finished by {me}\n"},
                "same": {"fin/same.txt": f"round {r}, the same for both\n"},
            }[mode]
            out = {"round": r}
            try:
                out["version"] = (await run.finish_artifact(await artifact(last), did)).version
            except asyncart.AlreadyFinishedError as e:
                out.update(error=type(e).__name__, version=f"v{e.version}", message=str(e))
            except asyncart.AsyncartError as e:
                out.update(error=type(e).__name__, message=str(e))
            print(json.dumps(out), flush=True)
            barrier(f"finished{r}")


asyncio.run(main())
"""


async def race(tmp_path: Path, store: str, mode: str) -> list[list[dict[str, Any]]]:
    """Run both workers through every round; return each worker's per-round results."""
    sync = tmp_path / "sync"
    sync.mkdir()
    outputs: dict[int, str] = {}

    async def worker(me: int) -> None:
        args = dict(me=me, sync=str(sync), tmp=str(tmp_path), store=store, name=NAME, did=DID)
        args.update(mode=mode, rounds=ROUNDS)
        done = await anyio.run_process(
            [sys.executable, "-c", WORKER, json.dumps(args)], check=False
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        outputs[me] = done.stdout.decode()

    with anyio.fail_after(300):
        async with anyio.create_task_group() as tg:
            for me in (0, 1):
                tg.start_soon(worker, me)
    return [[json.loads(line) for line in outputs[me].splitlines()] for me in (0, 1)]


async def versions(store: str) -> list[asyncart.Artifact]:
    report = await asyncart.audit(PROJECT, store=store)
    assert report.ok, str(report)
    return (await asyncart.Api(PROJECT, store=store).artifact_versions(NAME))[::-1]  # v0 first


def files_of(artifact: asyncart.Artifact) -> set[str]:
    return set(artifact.manifest.entries)


@pytest.mark.parametrize("mode", ["empty", "same"])
async def test_finishers_bringing_nothing_new_both_get_the_one_version(
    tmp_path: Path, store: str, mode: str
) -> None:
    """Empty finishers (one of which never upserted), or finishers of one identical file."""
    results = await race(tmp_path, store, mode)
    committed = await versions(store)
    assert len(committed) == ROUNDS, [files_of(v) for v in committed]
    for r in range(ROUNDS):
        assert [w[r] for w in results] == [{"round": r, "version": f"v{r}"}] * 2
        expected = {"up/0.txt"} if mode == "empty" else {"up/0.txt", "up/1.txt", "fin/same.txt"}
        assert files_of(committed[r]) == expected


async def test_finishers_with_their_own_files_make_one_version_and_one_conflict(
    tmp_path: Path, store: str
) -> None:
    results = await race(tmp_path, store, "file")
    committed = await versions(store)
    assert len(committed) == ROUNDS, [files_of(v) for v in committed]
    for r in range(ROUNDS):
        outcomes = [w[r] for w in results]
        won = [me for me, o in enumerate(outcomes) if "error" not in o]
        assert len(won) == 1, outcomes
        winner, loser = won[0], 1 - won[0]
        assert outcomes[winner] == {"round": r, "version": f"v{r}"}
        assert outcomes[loser]["error"] == "AlreadyFinishedError", outcomes
        assert outcomes[loser]["version"] == f"v{r}"
        assert f"as v{r}" in outcomes[loser]["message"] and DID in outcomes[loser]["message"]
        # the version holds every upserted file and the winner's own, never the loser's
        assert files_of(committed[r]) == {"up/0.txt", "up/1.txt", f"fin/{winner}.txt"}
    latest = await asyncart.Api(PROJECT, store=store).artifact(NAME)
    assert latest.version == f"v{ROUNDS - 1}"


async def test_a_late_finisher_gets_the_version_and_a_new_round_still_works(store: str) -> None:
    """One process, in order: a second, empty finish of a finished draft returns its version
    (finishing is idempotent); new files for the same distributed id start the next one."""
    tmp = Path(store).parent / "part.txt"
    await anyio.Path(tmp).write_text("part\n")
    async with asyncart.init(project=PROJECT, store=store) as run:
        part = asyncart.Artifact(NAME, "dataset")
        await part.add_file(tmp)
        await run.upsert_artifact(part, DID)
        v0 = await run.finish_artifact(asyncart.Artifact(NAME, "dataset"), DID)
        again = await run.finish_artifact(asyncart.Artifact(NAME, "dataset"), DID)
    assert (v0.version, again.version) == ("v0", "v0")
    async with asyncart.init(project=PROJECT, store=store) as run:
        more = asyncart.Artifact(NAME, "dataset")
        await more.add_file(tmp, "more.txt")
        v1 = await run.finish_artifact(more, DID)
    assert v1.version == "v1" and files_of(v1) == {"more.txt"}


async def test_a_finisher_without_metadata_keeps_what_the_upserts_set(
    store: str, tmp_path: Path
) -> None:
    part_file = tmp_path / "part.txt"
    await anyio.Path(part_file).write_text("part\n")
    async with asyncart.init(project=PROJECT, store=store) as run:
        part = asyncart.Artifact(NAME, "dataset", description="shards", metadata={"rows": 3})
        await part.add_file(part_file)
        await run.upsert_artifact(part, DID)
        final = await run.finish_artifact(asyncart.Artifact(NAME, "dataset"), DID)
    loaded = await asyncart.Api(PROJECT, store=store).artifact(NAME)
    for artifact in (final, loaded):
        assert (artifact.metadata, artifact.description) == ({"rows": 3}, "shards")
