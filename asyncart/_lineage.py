"""Lineage: which run logged a version, and which runs used it (from the runs' notes, and
the streams of the runs that matter)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ._domain.fold import RunState
from ._domain.notes import RunNote, decode_note
from ._repository import Repository, run_stream
from ._threads import HEAVY, maybe_thread


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


async def runs_using(repo: Repository, project: str, used: tuple[str, str, int]) -> list[RunInfo]:
    """The runs of ``project`` that used ``used`` (project, name, version), by run id.

    Reads the notes of the project's run streams, then only the streams of the runs whose note
    names ``used``, or whose note is missing or incomplete (a store written by an older
    release, a run that used more than a note holds, a damaged note).
    """
    prefix = run_stream(project, "")
    notes = await repo.store.log.notes(prefix)
    candidates = await maybe_thread(len(notes) > HEAVY, _candidates, prefix, notes, used)
    out = []
    for run_id in candidates:
        info = run_info(project, run_id, await repo.run(project, run_id))
        if used in info.used:  # the stream is the truth, whatever its note said
            out.append(info)
    return out


def _candidates(prefix: str, notes: Mapping[str, bytes], used: tuple[str, str, int]) -> list[str]:
    """The ids of the runs that may have used ``used``, sorted: those whose note says so or
    cannot tell."""
    out = []
    for stream in sorted(notes):
        note = decode_note(notes[stream])
        if not isinstance(note, RunNote) or not note.complete or used in note.used:
            out.append(stream.removeprefix(prefix))
    return out
