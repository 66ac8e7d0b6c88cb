"""Registry links: a collection whose versions are other collections' versions.

``link`` appends one ``version.linked`` record to the target collection: the next version of
the target, whose manifest is the source's (no file is copied; the source manifest is stored
once more as a snapshot blob, which is a no-op when the source has the same snapshot). A link
of a link links its source. Linking a source that a live version of the target already links
makes no new version: the aliases move to that version.

Deleting the source version leaves its links readable: the collector marks every live
version's files, a link's included (see ``_gc.py``), and the source's records stay in the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ._backends.base import Swept
from ._domain.events import AliasesMoved, CollectionCreated, Event, VersionLinked
from ._domain.fold import CollectionState, Version
from ._errors import CollectedError, InvalidInputError
from ._names import check_name
from ._repository import Repository, collection_stream
from ._threads import HEAVY, maybe_thread

_COLLECTED_RETRIES = 5


def parse_target(target_path: str, default_project: str) -> tuple[str, str]:
    """(project, name) of a link target: ``name`` (in ``default_project``), ``project/name``,
    or ``entity/project/name`` as W&B writes it (the entity is ignored: a store has none).

    Raises:
        InvalidInputError: anything else (an alias or version is not part of a target).
    """
    if not isinstance(target_path, str) or ":" in target_path:
        raise InvalidInputError(
            f"a link target is [[entity/]project/]name, not {str(target_path)[:200]!r}: "
            "pass aliases with aliases=[...]"
        )
    parts = target_path.split("/")
    if len(parts) > 3:
        raise InvalidInputError(f"a link target is [[entity/]project/]name, not {target_path!r}")
    name = check_name(parts[-1], "artifact name")
    project = check_name(parts[-2], "project") if len(parts) > 1 else default_project
    return project, name


async def link(
    repo: Repository,
    source: tuple[str, str, int],
    target: tuple[str, str],
    aliases: Sequence[str],
    actor: str,
    run_project: str | None = None,
) -> tuple[CollectionState, Version]:
    """Link version ``source`` (project, name, number) into collection ``target`` (project,
    name); return the target's state and the version that links it.

    Raises:
        NotFoundError: no such source version (DeletedError: it was deleted).
        InvalidInputError: the target is the source's own collection, or of another type.
    """
    for tries in range(_COLLECTED_RETRIES, -1, -1):
        # read before the snapshot is stored: a sweep meanwhile refuses the append (_gc.py)
        epoch = await repo.store.epoch() if isinstance(repo.store, Swept) else None
        try:
            linking = _Linking(list(aliases), actor, run_project, epoch)
            return await _link_once(repo, source, target, linking)
        except CollectedError:
            if not tries:
                raise
    raise AssertionError("unreachable")


async def _link_once(
    repo: Repository,
    source: tuple[str, str, int],
    target: tuple[str, str],
    linking: _Linking,
) -> tuple[CollectionState, Version]:
    aliases, actor = linking.aliases, linking.actor
    project, name, number = source
    src_state, src = await repo.version(project, name, number, None)
    if src.link is not None:  # a link of a link is a link of its source
        link_ = src.link
        project, name = link_.source_project, link_.source_name
        src_state, src = await repo.version(project, name, link_.source_version, None)
    if (project, name) == target:
        raise InvalidInputError(f"{project}/{name}:v{src.number} is in {project}/{name} already")
    manifest = await repo.manifest(src_state, src)
    data = await maybe_thread(len(manifest) > HEAVY, manifest.to_snapshot)
    snapshot = await repo.store.blobs.put_bytes(data)  # a no-op when the source has it
    await repo.store.blobs.flush()

    async def step(state: CollectionState) -> tuple[CollectionState, Version]:
        if state.type and state.type != src_state.type:
            raise InvalidInputError(
                f"{target[0]}/{target[1]} holds artifacts of type {state.type!r}, "
                f"not {src_state.type!r}; link into another collection"
            )
        same = _linking(state, (project, name, src.number))
        if same is not None:
            moved = [a for a in aliases if state.aliases.get(a) != same.number]
            if moved:
                await repo.append(state, [AliasesMoved(same.number, moved)], actor)
            return await repo.version(target[0], target[1], same.number, None)
        bodies: list[Event] = [] if state.head else [CollectionCreated(target[1], src_state.type)]
        commit, draft = src.commit, src.draft
        linked = VersionLinked(
            len(state.versions),
            project,
            name,
            src.number,
            commit.digest,
            commit.file_count,
            commit.size,
            snapshot,
            aliases,
            draft.metadata,
            draft.description,
            linking.run_project,
        )
        await repo.append(state, [*bodies, linked], actor, linking.epoch)
        repo._remember((state.stream, linked.version), manifest)
        return await repo.version(target[0], target[1], linked.version, None)

    result: tuple[CollectionState, Version] = await repo._retrying(target[0], target[1], step)
    return result


@dataclass(frozen=True)
class _Linking:
    aliases: list[str]
    actor: str
    run_project: str | None
    epoch: int | None


def _linking(state: CollectionState, source: tuple[str, str, int]) -> Version | None:
    """The live version of ``state`` that links ``source``, if any."""
    return next((v for v in reversed(state.versions) if links_source(v, source)), None)


def links_source(version: Version, source: tuple[str, str, int]) -> bool:
    """Whether ``version`` is live and links ``source`` (project, name, number)."""
    link_ = version.link
    if version.deleted is not None or link_ is None:
        return False
    return (link_.source_project, link_.source_name, link_.source_version) == source


async def links_to(
    repo: Repository, source: tuple[str, str, int]
) -> list[tuple[str, str, Version]]:
    """(project, name, version) of every live version in the store that links ``source``: each
    collection of the store is read (from its checkpoint), so this costs a scan."""
    found: list[tuple[str, str, Version]] = []
    for stream in await repo.store.log.streams(""):
        project, kind, name = stream.partition("/artifacts/")
        if not kind or "/" in project or stream == collection_stream(source[0], source[1]):
            continue
        state = await repo.collection(project, name)
        found += [(project, name, v) for v in state.versions if links_source(v, source)]
    return found
