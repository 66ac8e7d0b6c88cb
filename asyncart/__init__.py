"""asyncart: versioned, event-sourced artifacts for async Python.

Example::

    import asyncart

    async with asyncart.init(project="demo", job_type="train") as run:
        artifact = asyncart.Artifact("images", "dataset")
        await artifact.add_dir("images/")
        logged = await run.log_artifact(artifact, aliases=["best"])
        print(logged.version, logged.digest)
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING

from ._api import Api as Api
from ._artifact import Artifact as Artifact
from ._backends.base import BlobStore as BlobStore
from ._backends.base import EventLog as EventLog
from ._backends.base import Store as Store
from ._backends.base import UploadItem as UploadItem
from ._backends.local import LocalStore as LocalStore
from ._collections import ArtifactType as ArtifactType
from ._collections import CollectionHandle as CollectionHandle
from ._diff import ManifestDiff as ManifestDiff
from ._domain.events import Entry as Entry
from ._domain.manifest import Manifest as Manifest
from ._errors import AccessDeniedError as AccessDeniedError
from ._errors import AlreadyFinishedError as AlreadyFinishedError
from ._errors import AsyncartError as AsyncartError
from ._errors import AsyncartWarning as AsyncartWarning
from ._errors import BackendUnavailableError as BackendUnavailableError
from ._errors import CollectedError as CollectedError
from ._errors import ConflictError as ConflictError
from ._errors import DeletedError as DeletedError
from ._errors import FileChangedError as FileChangedError
from ._errors import HasAliasesError as HasAliasesError
from ._errors import IntegrityError as IntegrityError
from ._errors import InvalidInputError as InvalidInputError
from ._errors import MissingDistributedIdError as MissingDistributedIdError
from ._errors import MissingEntryError as MissingEntryError
from ._errors import MissingPathError as MissingPathError
from ._errors import NotDurableError as NotDurableError
from ._errors import NotFoundError as NotFoundError
from ._errors import SealedError as SealedError
from ._errors import VerificationError as VerificationError
from ._files import ArtifactEntry as ArtifactEntry
from ._files import ArtifactFiles as ArtifactFiles
from ._history import ArtifactCollection as ArtifactCollection
from ._history import LogEntry as LogEntry
from ._lineage import RunInfo as RunInfo
from ._retention import RetentionReport as RetentionReport
from ._retention import RetentionRule as RetentionRule
from ._retention import apply_retention as apply_retention
from ._retention import retention_rules as retention_rules
from ._retention import set_retention as set_retention
from ._store import STORE_ENV as STORE_ENV
from ._transfer import Progress as Progress

__version__ = "0.1.0"

if _TYPE_CHECKING:  # type checkers see the imports, so they still catch misspelled names
    from ._audit import AuditProblem as AuditProblem
    from ._audit import AuditProgress as AuditProgress
    from ._audit import AuditReport as AuditReport
    from ._audit import audit as audit
    from ._backends.http import HttpStore as HttpStore
    from ._backends.pg_s3 import PostgresS3Store as PostgresS3Store
    from ._copy import CopyProgress as CopyProgress
    from ._copy import CopyReport as CopyReport
    from ._copy import copy_store as copy_store
    from ._gc import GcReport as GcReport
    from ._gc import gc as gc
    from ._run import Run as Run
    from ._run import init as init
else:
    # Imported on first use: a program that reads a local store (`asyncart ls`) needs none of
    # them, and aiohttp (HttpStore), or asyncpg and the S3 client (PostgresS3Store), would
    # double the objects the garbage collector walks (and add 0.1 s to start-up) for every
    # program, most of which use only the local store.
    _LAZY = {
        "AuditProblem": "._audit",
        "AuditProgress": "._audit",
        "AuditReport": "._audit",
        "audit": "._audit",
        "CopyProgress": "._copy",
        "CopyReport": "._copy",
        "copy_store": "._copy",
        "GcReport": "._gc",
        "gc": "._gc",
        "HttpStore": "._backends.http",
        "PostgresS3Store": "._backends.pg_s3",
        "Run": "._run",
        "init": "._run",
    }

    def __getattr__(name: str) -> object:
        """The public names of :data:`_LAZY`, imported on first use."""
        if name in _LAZY:
            import importlib

            value = getattr(importlib.import_module(_LAZY[name], __name__), name)
            globals()[name] = value
            return value
        raise AttributeError(f"module 'asyncart' has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*globals(), *_LAZY})


__all__ = (
    "AccessDeniedError",
    "AlreadyFinishedError",
    "CollectedError",
    "CollectionHandle",
    "Api",
    "Artifact",
    "ArtifactCollection",
    "ArtifactEntry",
    "ArtifactFiles",
    "ArtifactType",
    "AsyncartError",
    "AsyncartWarning",
    "AuditProblem",
    "AuditProgress",
    "AuditReport",
    "BackendUnavailableError",
    "BlobStore",
    "ConflictError",
    "CopyProgress",
    "CopyReport",
    "DeletedError",
    "Entry",
    "EventLog",
    "FileChangedError",
    "HasAliasesError",
    "HttpStore",
    "IntegrityError",
    "InvalidInputError",
    "LocalStore",
    "LogEntry",
    "Manifest",
    "ManifestDiff",
    "MissingDistributedIdError",
    "MissingEntryError",
    "MissingPathError",
    "NotDurableError",
    "NotFoundError",
    "PostgresS3Store",
    "Progress",
    "RetentionReport",
    "RetentionRule",
    "Run",
    "RunInfo",
    "STORE_ENV",
    "SealedError",
    "Store",
    "UploadItem",
    "VerificationError",
    "apply_retention",
    "audit",
    "gc",
    "GcReport",
    "copy_store",
    "init",
    "retention_rules",
    "set_retention",
)
