"""Lineage: which run logged a version, and which runs used it (read from the runs' streams)."""

from __future__ import annotations

from dataclasses import dataclass

from ._domain.fold import RunState
from ._repository import Repository, run_stream


@dataclass(frozen=True)
class RunInfo:
    """A run as its stream records it."""

    id: str
    project: str
    group: str | None
    job_type: str | None
    used: tuple[tuple[str, str, int], ...]  # (project, artifact name, version number)
    logged: tuple[tuple[str, int], ...]  # (artifact name, version number), in the run's project
    finished: bool


def run_info(project: str, run_id: str, state: RunState) -> RunInfo:
    started = state.started
    return RunInfo(
        run_id,
        project,
        started.group if started else None,
        started.job_type if started else None,
        tuple(state.used),
        tuple(state.logged),
        state.finished is not None,
    )


def actor_run_id(actor: str) -> str | None:
    """The run id in an actor like ``run:ab12cd34``, or ``run:ab12cd34@token:3f9a1c2b4d5e`` as a
    server records it (with the id of the token it came with); None for a user outside any run."""
    claimed = actor.partition("@token:")[0]
    return claimed.removeprefix("run:") if claimed.startswith("run:") else None


async def runs(repo: Repository, project: str) -> list[RunInfo]:
    """Every run of ``project`` (one stream read each)."""
    prefix = run_stream(project, "")
    out = []
    for stream in await repo.store.log.streams(prefix):
        run_id = stream.removeprefix(prefix)
        out.append(run_info(project, run_id, await repo.run(project, run_id)))
    return out
