"""Api: read access to a store outside any run."""

from __future__ import annotations

import os

from ._artifact import DEFAULT_PROJECT, Artifact, load_artifact
from ._backends.base import Store
from ._lineage import RunInfo, run_info
from ._names import check_name
from ._repository import Repository
from ._store import open_store


class Api:
    """Query a store: ``await asyncart.Api(project="demo").artifact("demo/mnist:v3")``."""

    def __init__(
        self,
        project: str | None = None,
        store: str | os.PathLike[str] | Store | None = None,
        token: str | None = None,
    ) -> None:
        self.project = check_name(project or DEFAULT_PROJECT, "project")
        self._repo = Repository(open_store(store, token))

    async def artifact(self, ref: str) -> Artifact:
        """The committed artifact named by ``[project/]name[:alias|:vN]`` (alias: ``latest``).

        Raises:
            NotFoundError: no such artifact, version or alias.
        """
        return await load_artifact(self._repo, ref, self.project)

    async def artifact_versions(self, name: str, project: str | None = None) -> list[Artifact]:
        """Every committed version of an artifact, oldest first."""
        project = check_name(project or self.project, "project")
        state = await self._repo.collection(project, check_name(name, "artifact name"))
        return [
            await load_artifact(self._repo, f"{project}/{name}:v{v.number}", project)
            for v in state.versions
        ]

    async def run(self, run_id: str, project: str | None = None) -> RunInfo:
        """What a run's stream records: group, job type, artifacts used and logged."""
        project = check_name(project or self.project, "project")
        return run_info(
            project, run_id, await self._repo.run(project, check_name(run_id, "run id"))
        )

    async def aclose(self) -> None:
        """Release the store's resources (connections, for remote stores)."""
        await self._repo.store.aclose()

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
