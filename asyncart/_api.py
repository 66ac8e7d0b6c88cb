"""Api: read access to a store outside any run."""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from types import MappingProxyType

from ._artifact import DEFAULT_PROJECT, Artifact, _user_actor, load_artifact, load_version
from ._backends.base import Store
from ._collections import ArtifactType, CollectionHandle, check_per_page, check_type
from ._errors import InvalidInputError, NotFoundError
from ._history import (
    ArtifactCollection,
    CollectionRows,
    LogEntry,
    collection_rows,
    collection_summary,
    list_collections,
    read_log,
)
from ._lineage import RunInfo, run_info
from ._names import check_name, check_tags, parse_ref
from ._repository import Repository, collection_stream
from ._store import holding_store, open_store


class Api:
    """Query a store: ``await asyncart.Api(project="demo").artifact("demo/mnist:v3")``."""

    def __init__(
        self,
        project: str | None = None,
        store: str | os.PathLike[str] | Store | None = None,
        token: str | None = None,
    ) -> None:
        self.project = check_name(DEFAULT_PROJECT if project is None else project, "project")
        self._repo = Repository(open_store(store, token))
        self._exits = AsyncExitStack()

    @holding_store
    async def artifact(self, ref: str, type: str | None = None) -> Artifact:
        """The committed artifact named by ``[project/]name[:alias|:vN]`` (alias: ``latest``).

        ``type``, as in W&B, checks the artifact's type when given.

        Raises:
            NotFoundError: no such artifact, version or alias.
            InvalidInputError: the artifact's type is not ``type``.
        """
        art = await load_artifact(self._repo, ref, self.project)
        if type is not None and art.type != type:
            raise InvalidInputError(f"artifact {ref!r} is of type {art.type!r}, not {type!r}")
        return art

    async def artifact_exists(self, ref: str, type: str | None = None) -> bool:
        """Whether ``artifact(ref, type)`` would find a version (W&B's ``artifact_exists``).

        A type that does not match counts as absent, as in W&B.
        """
        try:
            await self.artifact(ref, type)
        except (NotFoundError, InvalidInputError):
            return False
        return True

    @holding_store
    async def artifact_collection_exists(self, name: str, type: str | None = None) -> bool:
        """Whether the collection ``[project/]name`` holds a version (deleted ones count, as
        the collection stays, unless it was deleted as a whole), of type ``type`` when given.

        W&B's ``artifact_collection_exists``; one collection's state is read, nothing more.
        """
        ref = parse_ref(name)
        if ref.version is not None or ":" in name:
            raise InvalidInputError(f"{name!r} names a version: give a collection's name")
        project = self.project if ref.project is None else ref.project
        state = await self._repo.collection(project, ref.name)
        live = bool(state.versions) and not state.gone
        return live and (type is None or state.type == type)

    @holding_store
    async def discard_artifact(
        self, name: str, distributed_id: str, project: str | None = None
    ) -> str:
        """Close the pending distributed version of ``distributed_id`` without committing it;
        return the discarded draft's id.

        Raises:
            NotFoundError: nothing is pending for ``distributed_id``.
        """
        project = check_name(self.project if project is None else project, "project")
        did = check_name(distributed_id, "distributed_id")
        return await self._repo.discard(
            project, check_name(name, "artifact name"), did, _user_actor()
        )

    @holding_store
    async def delete_collection(
        self, name: str, project: str | None = None, *, dry_run: bool = False, reason: str = ""
    ) -> ArtifactCollection:
        """Delete a whole artifact collection, as one ``collection.deleted`` event (W&B's
        ``api.artifact_collection(type, name).delete()``); return it as it was before.

        Every version is deleted and its aliases taken off; open (pending distributed) drafts
        are closed. Resolving any of its versions or aliases then raises :class:`DeletedError`
        saying who deleted the collection and when; listings leave it out; ``audit`` still
        replays it and reports its versions as deleted; :func:`asyncart.gc` reclaims the blobs
        only it held. Numbers are never reused: logging the same name again (with the same
        type) starts a new version one past the highest ever committed.

        Args:
            name: the collection, ``[project/]name``.
            project: its project (default: this Api's).
            dry_run: check that the deletion would be accepted now, and write nothing.
            reason: recorded with the deletion (shown by ``history``).

        Raises:
            NotFoundError: no such collection (DeletedError: it was deleted already).
        """
        ref = parse_ref(name)
        if ref.version is not None or ":" in name:
            raise InvalidInputError(f"{name!r} names a version: give a collection's name")
        project = check_name(ref.project or project or self.project, "project")
        state, aliases = await self._repo.delete_collection(
            project, check_name(ref.name, "artifact name"), _user_actor(), dry_run, reason
        )
        latest = aliases.get("latest")
        updated = None if latest is None else state.versions[latest].time
        return ArtifactCollection(
            project,
            state.name,
            state.type,
            len(state.versions),
            MappingProxyType(aliases),
            None if updated is None else datetime.fromtimestamp(updated, UTC),
        )

    async def artifact_versions(
        self,
        type_name: str,
        name: str | None = None,
        per_page: int = 50,
        tags: str | Sequence[str] | None = None,
    ) -> list[Artifact]:
        """Every committed version of ``[[entity/]project/]name``, newest first, as W&B's
        ``api.artifact_versions(type_name, name)``: the same as :meth:`artifacts`.

        The one-argument call of earlier releases, ``artifact_versions(name)``, still means
        every version of ``name`` whatever its type (W&B has no one-argument form, so it
        cannot mean anything else).

        Raises:
            NotFoundError: with a type, no such collection.
            InvalidInputError: with a type, the collection is of another type.
        """
        if name is None:
            return await self._versions(type_name, None, per_page, tags)
        return await self._versions(name, type_name, per_page, tags)

    async def artifacts(
        self,
        type_name: str,
        name: str,
        per_page: int = 50,
        tags: str | Sequence[str] | None = None,
    ) -> list[Artifact]:
        """The committed versions of the collection ``[[entity/]project/]name`` of type
        ``type_name``, newest first (as W&B lists them); with ``tags`` (a tag or a list), only
        those that have every one of them. Deleted versions are left out (``history`` shows
        their deletion). ``per_page`` is accepted for W&B's sake: the list comes whole.

        Raises:
            NotFoundError: no such collection (DeletedError: it was deleted).
            InvalidInputError: the collection is of another type, or a tag is not valid.
        """
        return await self._versions(name, type_name, per_page, tags)

    @holding_store
    async def _versions(
        self,
        name: str,
        type_name: str | None,
        per_page: int,
        tags: str | Sequence[str] | None,
    ) -> list[Artifact]:
        project, name = self._collection_path(name)
        check_per_page(per_page)
        wanted = set(check_tags([tags] if isinstance(tags, str) else tags or []))
        state = await self._repo.collection(project, name)
        if type_name is not None:
            check_type(project, state, type_name)
        live = [v for v in state.versions if v.deleted is None and wanted.issubset(v.draft.tags)]
        # loaded oldest first: each manifest is built on its parent's, cached just before
        found = [await load_version(self._repo, project, state, v) for v in live]
        return found[::-1]

    @holding_store
    async def artifact_collection(self, type_name: str, name: str) -> CollectionHandle:
        """The collection ``[[entity/]project/]name`` of type ``type_name`` (W&B's
        ``api.artifact_collection``), with ``artifacts()`` and ``await .delete()``; one
        collection's state is read, nothing more.

        Raises:
            NotFoundError: no such collection (DeletedError: it was deleted).
            InvalidInputError: it is of another type.
        """
        project, name = self._collection_path(name)
        state = await self._repo.collection(project, name)
        check_type(project, state, type_name)
        return CollectionHandle(self, collection_summary(project, state))

    @holding_store
    async def artifact_types(self, project: str | None = None) -> list[ArtifactType]:
        """The artifact types of a project (default: this Api's), sorted: each type some
        collection of it has. Read from notes, as :meth:`artifact_collections`."""
        project = check_name(self.project if project is None else project, "project")
        found = await list_collections(self._repo, project)
        return [ArtifactType(self, project, t) for t in sorted({c.type for c in found})]

    async def artifact_type(self, type_name: str, project: str | None = None) -> ArtifactType:
        """The artifact type ``type_name`` of a project (W&B's ``api.artifact_type``), with
        ``collections()``.

        Raises:
            NotFoundError: no collection of the project has that type.
        """
        for found in await self.artifact_types(project):
            if found.name == type_name:
                return found
        project = self.project if project is None else project
        raise NotFoundError(f"project {project} has no artifact of type {type_name!r}")

    @holding_store
    async def projects(self) -> list[str]:
        """The projects that have at least one artifact or run, sorted."""
        streams = await self._repo.store.log.streams()
        return sorted({stream.partition("/")[0] for stream in streams})

    @holding_store
    async def artifact_collections(
        self, project: str | None = None, type_name: str | None = None
    ) -> list[ArtifactCollection]:
        """Every artifact of a project (default: this Api's), sorted by name, of type
        ``type_name`` when given; a deleted collection (:meth:`delete_collection`) is left out.
        These are summaries: :meth:`artifact_collection` gives one with ``delete()``.

        Read from the streams' notes (no records), so the cost grows with the number of
        artifacts, not with their history; an artifact whose note is missing or unusable (a
        store written by an older release, a damaged note) is read from its stream instead.

        Example::

            for collection in await api.artifact_collections("demo"):
                print(collection.name, collection.type, collection.versions, collection.aliases)
        """
        project = check_name(self.project if project is None else project, "project")
        found = await list_collections(self._repo, project)
        return found if type_name is None else [c for c in found if c.type == type_name]

    @holding_store
    async def _collection_rows(self, project: str, type_name: str | None = None) -> CollectionRows:
        """:meth:`artifact_collections` as columns, with no object per collection (``ls``)."""
        rows = await collection_rows(self._repo, check_name(project, "project"))
        return rows if type_name is None else rows.of_type(type_name)

    @holding_store
    async def history(
        self, name: str | None = None, project: str | None = None, *, since: datetime | None = None
    ) -> list[LogEntry]:
        """The records behind an artifact, oldest first; without ``name``, the whole project's.

        A project's history merges every artifact and run stream by time. ``since`` keeps the
        records written at or after it.

        Raises:
            NotFoundError: ``name`` has no records in the project.
            IntegrityError: a stream's hash chain is broken (``audit`` tells more).
        """
        project = check_name(self.project if project is None else project, "project")
        if name is None:
            streams = await self._repo.store.log.streams(f"{project}/")
        else:
            streams = [collection_stream(project, check_name(name, "artifact name"))]
            if not await self._repo.store.log.read(streams[0], 0, limit=1):  # lists nothing
                raise NotFoundError(f"artifact {project}/{name} not found")
        return await read_log(self._repo.store, streams, since)

    @holding_store
    async def run(self, run_id: str, project: str | None = None) -> RunInfo:
        """What a run's stream records: group, job type, artifacts used and logged."""
        project = check_name(self.project if project is None else project, "project")
        return run_info(
            project, run_id, await self._repo.run(project, check_name(run_id, "run id"))
        )

    def _collection_path(self, name: str) -> tuple[str, str]:
        """(project, name) of a collection's ``[[entity/]project/]name``."""
        ref = parse_ref(name)
        if ref.version is not None or ":" in name:
            raise InvalidInputError(f"{name!r} names a version: give a collection's name")
        project = self.project if ref.project is None else ref.project
        return project, check_name(ref.name, "artifact name")

    def _store_in_use(self) -> Store:
        return self._repo.store

    async def aclose(self) -> None:
        """Let go of the store's connections (held since ``async with``)."""
        await self._exits.aclose()

    async def __aenter__(self) -> Api:
        """Keep the store's connections open until the block ends (otherwise each call opens
        and closes its own): worth it for a server store and many calls."""
        await self._exits.enter_async_context(self._repo.store.held())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
