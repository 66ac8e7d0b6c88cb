"""The scaled-out store: the event log in PostgreSQL, the blobs in an S3 bucket.

One location names both, so that every place that takes a store (``asyncart.init``, ``Api``,
``Artifact.save``, ``audit``, each CLI command, ``asyncart serve``) takes this one too::

    postgresql://USER:PASSWORD@HOST:PORT/DATABASE?blobs=s3://BUCKET/PREFIX[&connections=N]

The ``blobs`` and ``connections`` parameters are ours (``connections``: the most database
connections one process opens, default 4; a server that many clients share wants more);
every other part of the URL is PostgreSQL's (``sslmode``...).
The S3 endpoint and credentials come from the usual AWS variables: ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio.to_thread

from .._errors import BackendUnavailableError, InvalidInputError
from .base import StoredBlob

if TYPE_CHECKING:
    from .pg_log import PostgresEventLog
    from .s3_blobs import S3BlobStore


class PostgresS3Store:
    """A store whose log is a PostgreSQL database and whose blobs are in an S3 bucket.

    Any number of processes on any number of machines share it. Nothing is opened until
    the first call; :meth:`create` makes the schema (``asyncart init`` and the first writer
    do), :meth:`require` checks it is there.

    Raises:
        InvalidInputError: the location is not ``postgresql://...?blobs=s3://BUCKET/PREFIX``.
    """

    def __init__(self, location: str) -> None:
        self._dsn, self._blobs_url = split_location(location)
        self._connections = _connections(location)
        self.location = _without_password(location)
        self._ready = self._made = False  # checked, or made, once per store object
        self._bumped = False  # in the current sweep, the epoch moved on already

    @functools.cached_property
    def log(self) -> PostgresEventLog:
        """The event log, in the database."""
        from .pg_log import PostgresEventLog

        if self._connections is None:
            return PostgresEventLog(self._dsn)
        return PostgresEventLog(self._dsn, connections=self._connections)

    @functools.cached_property
    def blobs(self) -> S3BlobStore:
        """The blobs, in the bucket."""
        from .s3_blobs import S3BlobStore

        return S3BlobStore.from_url(self._blobs_url)

    async def create(self) -> None:
        """Create (or migrate) the log's schema and check the bucket can be reached.

        Raises:
            BackendUnavailableError: the database or the bucket cannot be reached or used.
        """
        if not self._made:
            await _import_clients()
            await self.log.create()
            await self.blobs.check()
            self._ready = self._made = True

    async def require(self) -> None:
        """Check that the log's schema is there (the bucket is checked on first use).

        Raises:
            BackendUnavailableError: the database cannot be reached or holds no schema.
        """
        if not self._ready:
            await _import_clients()
            await self.log.require()
            self._ready = True

    @asynccontextmanager
    async def _held(self) -> AsyncIterator[object]:
        await _import_clients()
        async with self.log.held(), self.blobs.held():
            yield self

    def held(self) -> AbstractAsyncContextManager[object]:
        """Keep the database pool and the S3 client open for the block (re-entrant)."""
        return self._held()

    async def aclose(self) -> None:
        """Close the database pool and the S3 client now (those that were opened)."""
        try:
            if "blobs" in self.__dict__:  # made on first use (cached_property)
                await self.blobs.aclose()
        finally:
            if "log" in self.__dict__:
                await self.log.aclose()

    # -- what the garbage collector needs (base.Collectable; see asyncart/_gc.py) -----------

    async def epoch(self) -> int:
        """The collection epoch (in the database), once no collector sweeps."""
        return await self.log.epoch()

    @asynccontextmanager
    async def _sweeping(self) -> AsyncIterator[None]:
        async with self.log.sweeping():
            self._bumped = False  # under the lock: a sweep that ran before it bumped its own
            yield

    def sweeping(self) -> AbstractAsyncContextManager[None]:
        """Hold the collector lock (a PostgreSQL advisory lock) for the block."""
        return self._sweeping()

    async def listed(self, shard: str) -> list[StoredBlob]:
        return await self.blobs.listed(shard)

    async def remove(self, digests: Sequence[str]) -> None:
        if not self._bumped:
            await self.log.bump_epoch()
            self._bumped = True
        await self.blobs.remove(digests)

    async def leftovers(self, before: float, remove: bool) -> tuple[int, int]:
        """Multipart uploads no process has written to since ``before`` (and the objects of
        incoming uploads a server left); streams cannot be left half-made in a database."""
        return await self.blobs.stale_uploads(before, remove)

    def __repr__(self) -> str:
        return f"PostgresS3Store({self.location!r})"


async def _import_clients() -> None:
    """Import asyncpg and the S3 client in a worker thread (botocore reads files as it loads)
    before the first use: every call on the store comes after :meth:`create`, :meth:`require`
    (see ``prepare_store``) or :meth:`held`.

    Raises:
        BackendUnavailableError: they are not installed (the ``scale`` extra).
    """
    for module in (f"{__package__}.pg_log", f"{__package__}.s3_blobs"):
        if module not in sys.modules:
            try:
                await anyio.to_thread.run_sync(importlib.import_module, module)
            except ModuleNotFoundError as e:
                raise BackendUnavailableError(
                    f"a PostgreSQL + S3 store needs {e.name}: pip install 'asyncart[scale]'"
                ) from None


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
    rest = urlencode([(key, value) for key, value in query if key not in _OURS])
    return urlunsplit(parts._replace(query=rest)), blobs[0]


_OURS = ("blobs", "connections")
MAX_CONNECTIONS = 1000


def _connections(location: str) -> int | None:
    """The ``connections`` parameter of ``location`` (None: not given).

    Raises:
        InvalidInputError: it is given more than once, or is not a whole number from 1 to
            MAX_CONNECTIONS.
    """
    query = parse_qsl(urlsplit(location).query, keep_blank_values=True)
    given = [value for key, value in query if key == "connections"]
    if not given:
        return None
    if len(given) == 1 and given[0].isdigit() and 1 <= int(given[0]) <= MAX_CONNECTIONS:
        return int(given[0])
    raise InvalidInputError(
        f"{_without_password(location)}: connections must be given once, as a whole number "
        f"from 1 to {MAX_CONNECTIONS} (the most database connections a process opens)"
    )


_SECRETS = ("password", "sslpassword")


def _without_password(location: str) -> str:
    """``location`` for messages and logs: every password (``user:PASSWORD@``,
    ``?password=``) replaced by ``***``."""
    parts = urlsplit(location)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = parse_qsl(parts.query, keep_blank_values=True)
    masked = [(key, "***" if key in _SECRETS else value) for key, value in query]
    if netloc == parts.netloc and masked == query:
        return location
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(masked, safe=":/*")))
