"""W&B-shaped handles on the Api's listings: an artifact type and one collection.

Each holds what a listing read (from notes, so building one costs no stream read) and the
Api that made it; its methods are that Api's queries, narrowed to the type or collection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from ._domain.fold import CollectionState
from ._errors import InvalidInputError, NotFoundError
from ._history import ArtifactCollection
from ._repository import _collection_deleted

if TYPE_CHECKING:
    from ._api import Api
    from ._artifact import Artifact


class CollectionHandle:
    """One artifact collection (every version of one name), as ``api.artifact_collection``
    and ``ArtifactType.collections`` give it: W&B's ``ArtifactCollection``.

    Attributes:
        summary: the :class:`ArtifactCollection` it was read as (``versions``: how many
            were ever committed).
        project, name, type, aliases, updated: the summary's.
    """

    def __init__(self, api: Api, summary: ArtifactCollection) -> None:
        self._api, self.summary = api, summary
        self.project, self.name, self.type = summary.project, summary.name, summary.type
        self.aliases: Mapping[str, int] = summary.aliases
        self.updated: datetime | None = summary.updated

    async def artifacts(
        self, per_page: int = 50, tags: str | Sequence[str] | None = None
    ) -> list[Artifact]:
        """Its versions, newest first, as ``api.artifacts(type, name, per_page, tags)``."""
        return await self._api.artifacts(self.type, self._path, per_page, tags)

    async def versions(
        self, per_page: int = 50, tags: str | Sequence[str] | None = None
    ) -> list[Artifact]:
        """The same as :meth:`artifacts` (W&B has both names)."""
        return await self.artifacts(per_page, tags)

    async def delete(self, *, dry_run: bool = False, reason: str = "") -> ArtifactCollection:
        """Delete the whole collection: :meth:`Api.delete_collection`, whose docstring says
        what that does; return the collection as it was before."""
        return await self._api.delete_collection(self._path, dry_run=dry_run, reason=reason)

    @property
    def _path(self) -> str:
        return f"{self.project}/{self.name}"

    def __repr__(self) -> str:
        return f"<CollectionHandle {self.summary}>"


class ArtifactType:
    """An artifact type of a project, as ``api.artifact_type(s)`` give it: W&B's
    ``ArtifactType``. It exists while a collection of that type does.

    Attributes:
        name: the type (``dataset``, ``model`` ...).
        project: the project it was listed in.
    """

    def __init__(self, api: Api, project: str, name: str) -> None:
        self._api, self.project, self.name = api, project, name

    @property
    def type(self) -> str:
        """The same as ``name`` (W&B's ``ArtifactType`` has both)."""
        return self.name

    async def collections(self, per_page: int = 50) -> list[CollectionHandle]:
        """The collections of this type, sorted by name (read from notes, as
        ``api.artifact_collections`` is); ``per_page`` is accepted for W&B's sake."""
        found = await self._api.artifact_collections(self.project, type_name=self.name)
        return [CollectionHandle(self._api, summary) for summary in found]

    async def collection(self, name: str) -> CollectionHandle:
        """The collection ``name`` of this type (``api.artifact_collection``)."""
        return await self._api.artifact_collection(self.name, f"{self.project}/{name}")

    def __repr__(self) -> str:
        return f"<ArtifactType {self.project}/{self.name}>"


def check_type(project: str, state: CollectionState, type_name: str) -> None:
    """Refuse a collection that does not exist (NotFoundError), was deleted (DeletedError)
    or is of another type than ``type_name`` (InvalidInputError)."""
    where = f"{project}/{state.stream.rpartition('/')[2]}"
    if not state.head:
        raise NotFoundError(f"artifact {where} not found")
    if state.gone:
        raise _collection_deleted(f"artifact {where} not found: ", state)
    if state.type != type_name:
        raise InvalidInputError(f"artifact {where} is of type {state.type!r}, not {type_name!r}")


def check_per_page(per_page: object) -> None:
    """Refuse a ``per_page`` W&B would refuse (not a positive int); it has no other effect."""
    if isinstance(per_page, bool) or not isinstance(per_page, int) or per_page < 1:
        raise InvalidInputError(f"per_page must be a positive int, not {per_page!r}")
