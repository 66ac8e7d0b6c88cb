"""Choosing the store (an argument, else ``$ASYNCART_STORE``, else a per-user directory), and
holding it for the length of a call."""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import anyio.to_thread

from ._backends.base import Creatable, Store
from ._backends.local import LocalStore

STORE_ENV = "ASYNCART_STORE"


def default_store_location() -> str:
    """``$ASYNCART_STORE``, else ``$XDG_DATA_HOME/asyncart``, else ``~/.local/share/asyncart``."""
    if env := os.environ.get(STORE_ENV):
        return env
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return str(Path(data) / "asyncart")


def open_store(
    store: str | os.PathLike[str] | Store | None = None, token: str | None = None
) -> Store:
    """Open ``store``: a Store as is, an ``http(s)://`` URL as an :class:`HttpStore` (with
    ``token``, default ``$ASYNCART_TOKEN``), a ``postgresql://...?blobs=s3://BUCKET/PREFIX``
    URL as a :class:`PostgresS3Store`, a path as a :class:`LocalStore`, None as the default.

    Nothing is read or created yet: see :func:`prepare_store`.

    Raises:
        InvalidInputError: an empty location, or a URL of another scheme (``ftp://``...).
    """
    if store is None:
        store = default_store_location()
    if not isinstance(store, str | os.PathLike):
        return store
    location = os.fspath(store)
    if _is_url(location):
        from ._backends.http import HttpStore  # aiohttp, only for a server store

        return HttpStore(location, token)
    if location.startswith(_PG_SCHEMES):
        from ._backends.pg_s3 import PostgresS3Store  # asyncpg and the S3 client, only here

        return PostgresS3Store(location)
    return LocalStore(location)


async def prepare_store(store: Store, *, create: bool) -> None:
    """Before the first call on ``store``: a writer (``create``) makes a local store that is not
    there yet; a reader needs one to be there.

    A server makes its store when it starts serving; a local or PostgreSQL + S3 store is made
    here (its directory, or its schema).

    Raises:
        NotFoundError: (reading) the location holds no store.
        BackendUnavailableError: a file is where the store should be, or (writing) the store
            is not writable; the database or bucket cannot be reached; the message says which.
    """
    if isinstance(store, Creatable):
        await (store.create() if create else store.require())


async def load_backend(store: object) -> None:
    """Import a networked backend (aiohttp: 0.1 s; asyncpg and the S3 client) in a worker
    thread, not on the event loop, when ``store`` is the first of its kind this process opens."""
    location = os.fspath(store) if isinstance(store, str | os.PathLike) else None
    if not isinstance(location, str):
        return
    module = _HTTP_BACKEND if _is_url(location) else None
    if location.startswith(_PG_SCHEMES):
        module = _PG_BACKEND
    if module is not None and module not in sys.modules:
        await anyio.to_thread.run_sync(importlib.import_module, module)


_HTTP_BACKEND = "asyncart._backends.http"
_PG_BACKEND = "asyncart._backends.pg_s3"
_PG_SCHEMES = ("postgresql://", "postgres://")


def _is_url(location: str | bytes) -> bool:
    return isinstance(location, str) and location.startswith(("http://", "https://"))


class _UsesStore(Protocol):
    def _store_in_use(self) -> Store: ...


S = TypeVar("S", bound=_UsesStore)
P = ParamSpec("P")
R = TypeVar("R")


def holding_store(
    method: Callable[Concatenate[S, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, R]]:
    """Run the method with ``self._store_in_use()`` held: its requests share one connection
    pool, closed when it returns unless something else holds the store. The store must exist
    (these methods read it; see :func:`prepare_store`)."""

    @functools.wraps(method)
    async def held(obj: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        store = obj._store_in_use()
        await prepare_store(store, create=False)
        async with store.held():
            return await method(obj, *args, **kwargs)

    return held
