"""Runs: the unit of work that uses and logs artifacts, and records it (lineage)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

from ._artifact import DEFAULT_PROJECT, Artifact, load_artifact, load_version
from ._backends.base import Store
from ._domain.events import ArtifactLogged, ArtifactUsed, RunFinished, RunStarted
from ._errors import InvalidInputError, MissingDistributedIdError
from ._files import artifact_from_path
from ._names import check_name
from ._repository import Repository, Transfer
from ._store import load_backend, open_store, prepare_store
from ._transfer import DEFAULT_CONCURRENCY, ProgressCallback
from ._values import check_mapping


def init(
    project: str | None = None,
    *,
    group: str | None = None,
    job_type: str | None = None,
    id: str | None = None,
    config: dict[str, Any] | None = None,
    store: str | os.PathLike[str] | Store | None = None,
    token: str | None = None,
) -> Run:
    """Create a run; use it as ``async with asyncart.init(project="demo") as run: ...``.

    Args:
        project: the project its artifacts belong to (default ``uncategorized``).
        group: groups runs; also the default ``distributed_id`` of upserted artifacts.
        job_type: what the run does (``train``, ``eval`` ...), recorded for lineage.
        id: the run id (default: a new random id).
        config: settings recorded in the run's stream: a JSON-compatible dict with str keys
            (copied now; NaN is stored as null, infinities are refused; at most
            ``MAX_DEPTH`` levels and ``MAX_BYTES`` encoded, see ``asyncart._values``).
        store: a directory (the embedded store) or Store; default ``$ASYNCART_STORE`` or
            ``~/.local/share/asyncart``; or the URL of an ``asyncart serve`` server.
        token: the server's bearer token (default ``$ASYNCART_TOKEN``); unused for local stores.
    """
    return Run(  # only None means "the default": an empty name is refused, not replaced
        DEFAULT_PROJECT if project is None else project,
        group,
        job_type,
        uuid.uuid4().hex[:12] if id is None else id,
        config,
        store,
        token,
    )


class Run:
    """A run. Start and finish it with ``async with``; see :func:`init`."""

    def __init__(
        self,
        project: str,
        group: str | None,
        job_type: str | None,
        id: str,
        config: dict[str, Any] | None,
        store: str | os.PathLike[str] | Store | None,
        token: str | None = None,
    ) -> None:
        self.project = check_name(project, "project")
        self.group = check_name(group, "group") if group is not None else None
        self.job_type = check_name(job_type, "job_type") if job_type is not None else None
        self.id = check_name(id, "run id")
        self.config = check_mapping(config, "config")  # a copy: later changes are not recorded
        self._store, self._token = store, token
        self._upserted: dict[tuple[str, str], str] = {}  # (artifact, distributed_id) -> draft
        self._repo: Repository | None = None
        self._exits = AsyncExitStack()

    @property
    def actor(self) -> str:
        return f"run:{self.id}"

    async def __aenter__(self) -> Run:
        await load_backend(self._store)
        repo = Repository(open_store(self._store, self._token))
        await prepare_store(repo.store, create=True)
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(repo.store.held())  # connections live as the run
            self._repo = repo
            await self._record(RunStarted(self.group, self.job_type, self.config))
            self._exits = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        async with self._exits:
            await self._record(RunFinished(1 if exc_type else 0))

    def _require(self) -> Repository:
        if self._repo is None:
            raise InvalidInputError(
                "the run is not started: use `async with asyncart.init(...) as run`"
            )
        return self._repo

    async def _record(self, *bodies: Any) -> None:
        await self._require().append_run(self.project, self.id, bodies, self.actor)

    async def log_artifact(
        self,
        artifact: Artifact | str | os.PathLike[str],
        aliases: Sequence[str] = (),
        *,
        name: str | None = None,
        type: str | None = None,
        progress: ProgressCallback | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> Artifact:
        """Upload the draft's new files and commit it as the next version; return that version.

        ``artifact`` becomes that version, as in W&B (``artifact.version`` is set) and is
        returned. Content identical to the latest version makes no new version: it becomes
        the latest (and ``aliases`` move to it; the draft's metadata and tags are not applied).

        ``artifact`` may also be a directory or file path, as in W&B: the draft is made of its
        files, named ``name`` (default ``run-RUN_ID-BASENAME``) and typed ``type`` (default
        ``unspecified``); ``name`` and ``type`` are for a path only.
        """
        if not isinstance(artifact, Artifact):
            artifact = await artifact_from_path(artifact, name, type, self.id)
        elif name is not None or type is not None:
            raise InvalidInputError("name= and type= are for logging a path; this is an Artifact")
        committed = await artifact._commit(
            self._require(), self.project, aliases, self.actor, Transfer(concurrency, progress)
        )
        await self._record(ArtifactLogged(committed._name, _number(committed)))
        return committed

    def _distributed_id(self, distributed_id: str | None) -> str:
        chosen = self.group if distributed_id is None else distributed_id
        if chosen is None:
            raise MissingDistributedIdError(
                "a distributed artifact needs distributed_id=..., or a run started with group=..."
            )
        return check_name(chosen, "distributed_id")

    async def upsert_artifact(
        self,
        artifact: Artifact,
        distributed_id: str | None = None,
        *,
        progress: ProgressCallback | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        """Add the artifact's files to the pending version shared by ``distributed_id``.

        ``distributed_id`` defaults to the run's group. Nothing is visible as a version until
        :meth:`finish_artifact`. The same path upserted twice keeps the last one in log order.
        """
        did = self._distributed_id(distributed_id)
        spec = await artifact._prepare()
        draft = await self._require().upsert(
            self.project,
            spec,
            did,
            self.actor,
            Transfer(concurrency, progress),
            self._upserted.get((artifact._name, did)),
        )
        self._upserted[(artifact._name, did)] = draft  # what a finish of this run must finish
        artifact._sealed = True
        await artifact._drop_new_files()

    async def discard_artifact(
        self, artifact: Artifact | str, distributed_id: str | None = None
    ) -> None:
        """Close the pending version of ``distributed_id`` (default: the run's group) without
        committing it. A later upsert with the same id starts a new pending version.

        Raises:
            NotFoundError: nothing is pending for ``distributed_id``.
        """
        name = artifact if isinstance(artifact, str) else artifact._name
        did = self._distributed_id(distributed_id)
        await self._require().discard(self.project, name, did, self.actor)
        self._upserted.pop((name, did), None)

    async def finish_artifact(
        self,
        artifact: Artifact,
        distributed_id: str | None = None,
        aliases: Sequence[str] = (),
        *,
        progress: ProgressCallback | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> Artifact:
        """Add the artifact's files (maybe none) and commit the pending version; return it
        (``artifact`` itself, which becomes that version, as in W&B).

        The pending version is the one this run upserted to, else the one pending when the
        call begins. If another finisher commits it meanwhile, that version is returned when
        it already holds this artifact's files (identically) and metadata.

        Raises:
            AlreadyFinishedError: another finisher committed it, without some of this
                artifact's files or metadata; nothing was written.
            NotFoundError: nothing is pending and the artifact has no files.
        """
        did = self._distributed_id(distributed_id)
        spec = await artifact._prepare()
        repo = self._require()
        state, version = await repo.finish(
            self.project,
            spec,
            did,
            list(aliases),
            self.actor,
            Transfer(concurrency, progress),
            upserted=self._upserted.get((artifact._name, did)),
        )
        self._upserted.pop((artifact._name, did), None)
        artifact._sealed = True
        await artifact._drop_new_files()
        committed = artifact._become(await load_version(repo, self.project, state, version))
        await self._record(ArtifactLogged(committed._name, version.number))
        return committed

    async def link_artifact(
        self, artifact: Artifact, target_path: str, aliases: Sequence[str] | None = None
    ) -> Artifact:
        """Link a committed version into the collection ``target_path`` as this run (see
        :meth:`Artifact.link`); return the target's version that links it. Its
        ``logged_by()`` is this run."""
        self._require()
        return await artifact._link(target_path, aliases, self.actor, self.project)

    async def use_artifact(self, ref: str | Artifact) -> Artifact:
        """Load a committed artifact (``[project/]name[:alias|:vN]``) and record its use.

        A draft (an ``Artifact`` not logged yet) is logged by this run first, as in W&B."""
        if isinstance(ref, Artifact) and ref.is_draft():
            await self.log_artifact(ref)
        if isinstance(ref, Artifact):
            ref = ref.qualified_name
        artifact = await load_artifact(self._require(), ref, self.project)
        await self._record(ArtifactUsed(artifact.project or "", artifact._name, _number(artifact)))
        return artifact


def _number(artifact: Artifact) -> int:
    assert artifact.version is not None
    return int(artifact.version[1:])
