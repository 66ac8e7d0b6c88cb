"""The embedded default store: a directory holding ``log/`` and ``blobs/``."""

from __future__ import annotations

import contextlib
import os
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from .local_blobs import LocalBlobStore
from .local_log import LocalEventLog


class LocalStore:
    """A store in a local directory, shared safely by any number of processes.

    Layout::

        ROOT/log/PROJECT/artifacts/NAME.log   one stream of framed records per collection
        ROOT/log/PROJECT/runs/RUN_ID.log      one stream per run (lineage)
        ROOT/blobs/ab/ab01...                 content-addressed blobs (files and snapshots)
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        self.location = str(self.root)
        self.log = LocalEventLog(self.root / "log")
        self.blobs = LocalBlobStore(self.root / "blobs")

    def held(self) -> AbstractAsyncContextManager[object]:
        """Nothing to keep open."""
        return contextlib.nullcontext()

    async def aclose(self) -> None:
        """Nothing to release: a local store holds no connections or tasks."""

    def __repr__(self) -> str:
        return f"LocalStore({self.location!r})"
