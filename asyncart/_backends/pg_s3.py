"""The scaled-out store: the event log in PostgreSQL, the blobs in an S3 bucket.

One location names both, so that every place that takes a store (``asyncart.init``, ``Api``,
``Artifact.save``, ``audit``, each CLI command, ``asyncart serve``) takes this one too::

    postgresql://USER:PASSWORD@HOST:PORT/DATABASE?blobs=s3://BUCKET/PREFIX

The ``blobs`` parameter is ours; every other part of the URL is PostgreSQL's (``sslmode``...).
The S3 endpoint and credentials come from the usual AWS variables: ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._errors import InvalidInputError
from .pg_log import PostgresEventLog
from .s3_blobs import S3BlobStore

SCHEMES = ("postgresql://", "postgres://")


class PostgresS3Store:
    """A store whose log is a PostgreSQL database and whose blobs are in an S3 bucket.

    Any number of processes on any number of machines share it. Nothing is opened until
    the first call; :meth:`create` makes the schema (``asyncart init`` and the first writer
    do), :meth:`require` checks it is there.

    Raises:
        InvalidInputError: the location is not ``postgresql://...?blobs=s3://BUCKET/PREFIX``.
    """

    def __init__(self, location: str) -> None:
        dsn, blobs = split_location(location)
        self.location = _without_password(location)
        self.log = PostgresEventLog(dsn)
        self.blobs = S3BlobStore.from_url(blobs)

    async def create(self) -> None:
        """Create (or migrate) the log's schema and check the bucket can be reached.

        Raises:
            BackendUnavailableError: the database or the bucket cannot be reached or used.
        """
        await self.log.create()
        await self.blobs.check()

    async def require(self) -> None:
        """Check that the log's schema is there (the bucket is checked on first use).

        Raises:
            NotFoundError: the database holds no asyncart schema.
            BackendUnavailableError: the database cannot be reached.
        """
        await self.log.require()

    @asynccontextmanager
    async def _held(self) -> AsyncIterator[object]:
        async with self.log.held(), self.blobs.held():
            yield self

    def held(self) -> AbstractAsyncContextManager[object]:
        """Keep the database pool and the S3 client open for the block (re-entrant)."""
        return self._held()

    async def aclose(self) -> None:
        """Close the database pool and the S3 client now."""
        with contextlib.suppress(Exception):
            await self.blobs.aclose()
        await self.log.aclose()

    def __repr__(self) -> str:
        return f"PostgresS3Store({self.location!r})"


def is_pg_location(location: str) -> bool:
    """Whether ``location`` names a PostgreSQL + S3 store."""
    return location.startswith(SCHEMES)


def split_location(location: str) -> tuple[str, str]:
    """(the PostgreSQL DSN without ``blobs``, the ``s3://`` URL of the blobs).

    Raises:
        InvalidInputError: no ``blobs=s3://BUCKET/...`` parameter, or a malformed one.
    """
    parts = urlsplit(location)
    query = parse_qsl(parts.query, keep_blank_values=True)
    blobs = [value for key, value in query if key == "blobs"]
    if len(blobs) != 1 or not blobs[0].startswith("s3://") or not urlsplit(blobs[0]).netloc:
        raise InvalidInputError(
            f"{_without_password(location)}: a PostgreSQL store also names its blob bucket: "
            "postgresql://USER@HOST/DATABASE?blobs=s3://BUCKET/PREFIX"
        )
    rest = urlencode([(key, value) for key, value in query if key != "blobs"])
    return urlunsplit(parts._replace(query=rest)), blobs[0]


def _without_password(location: str) -> str:
    """``location`` for messages and logs: the password replaced by ``***``."""
    parts = urlsplit(location)
    if parts.password is None:
        return location
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
