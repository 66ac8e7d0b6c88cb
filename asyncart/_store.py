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

from ._backends.base import Store
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
    ``token``, default ``$ASYNCART_TOKEN``), a path as a :class:`LocalStore`, None as the default.

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
    return LocalStore(location)


async def prepare_store(store: Store, *, create: bool) -> None:
    """Before the first call on ``store``: a writer (``create``) makes a local store that is not
    there yet; a reader needs one to be there.

    Only a local store can be missing: a server makes its store when it starts serving.

    Raises:
        NotFoundError: (reading) the location holds no store.
        BackendUnavailableError: a file is where the store should be, or (writing) the store
            is not writable; the message names the path.
    """
    if isinstance(store, LocalStore):
        await (store.create() if create else store.require())


async def load_backend(store: object) -> None:
    """Import the HTTP backend (aiohttp: 0.1 s) in a worker thread, not on the event loop,
    when ``store`` is the first URL this process opens."""
    is_url = isinstance(store, str | os.PathLike) and _is_url(os.fspath(store))
    if is_url and _HTTP_BACKEND not in sys.modules:
        await anyio.to_thread.run_sync(importlib.import_module, _HTTP_BACKEND)


_HTTP_BACKEND = "asyncart._backends.http"


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
