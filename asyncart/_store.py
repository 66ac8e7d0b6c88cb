"""Choosing the store: an argument, else ``$ASYNCART_STORE``, else a per-user directory."""

from __future__ import annotations

import os
from pathlib import Path

from ._backends.base import Store
from ._backends.local import LocalStore
from ._errors import BackendUnavailableError

STORE_ENV = "ASYNCART_STORE"


def default_store_location() -> str:
    """``$ASYNCART_STORE``, else ``$XDG_DATA_HOME/asyncart``, else ``~/.local/share/asyncart``."""
    if env := os.environ.get(STORE_ENV):
        return env
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return str(Path(data) / "asyncart")


def open_store(store: str | os.PathLike[str] | Store | None = None) -> Store:
    """Open ``store``: a Store as is, a path as a :class:`LocalStore`, None as the default."""
    if store is None:
        store = default_store_location()
    if not isinstance(store, str | os.PathLike):
        return store
    location = os.fspath(store)
    if location.startswith(("http://", "https://")):
        raise BackendUnavailableError(
            f"cannot open {location!r}: this version of asyncart only has the local store"
        )
    return LocalStore(location)
