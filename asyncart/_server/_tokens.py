"""Bearer tokens, stored hashed in ``STORE/tokens.json``.

Why a file and not a stream of the log: the log is artifact history served to every reader of a
project, and it is append-only; credentials are neither history nor public, and revoking one
must really remove it. The file holds only SHA-256 hashes (tokens are 256 random bits, so a slow
password hash would add nothing), is written atomically (temp file, rename) under a lock, and is
readable by its owner only.

``create_token``, ``list_tokens`` and ``revoke_token`` are the blocking API behind
``asyncart token create|list|revoke``; a running server's :class:`Grants` reloads the file when
it changes, so a revoked token is refused within a second.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import anyio
import anyio.to_thread

from .._backends._durable import atomic_write
from .._backends.base import Store
from .._backends.local import LocalStore
from .._errors import InvalidInputError, NotFoundError
from .._names import check_name

TOKENS_FILE = "tokens.json"
ALL = "*"
_PREFIX = "aat_"


@dataclass(frozen=True)
class Grant:
    """What one token may do: read (and maybe write) some projects, or everything (admin).

    ``id`` is the first 12 hex digits of the token's SHA-256, enough to name it but not to use
    it; ``created`` is when it was minted (seconds since the epoch; None for tokens minted
    before it was recorded).
    """

    id: str
    projects: tuple[str, ...]
    write: bool = False
    admin: bool = False
    note: str = ""
    created: float | None = None

    def can_read(self, project: str) -> bool:
        """Whether the token may read ``project``."""
        return self.admin or ALL in self.projects or project in self.projects

    def can_write(self, project: str) -> bool:
        """Whether the token may append to ``project``."""
        return self.can_read(project) and (self.write or self.admin)

    @property
    def writes_somewhere(self) -> bool:
        """Whether the token may write to at least one project (needed to upload blobs)."""
        return self.admin or (self.write and bool(self.projects))

    @property
    def scope(self) -> str:
        """``admin``, ``write: a, b`` or ``read: a`` (``*``: every project)."""
        if self.admin:
            return "admin"
        return f"{'write' if self.write else 'read'}: {', '.join(self.projects)}"


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def tokens_path(store_dir: str | os.PathLike[str]) -> Path:
    """Where a served store directory keeps its tokens."""
    return Path(store_dir) / TOKENS_FILE


def create_token(
    store_dir: str | os.PathLike[str],
    projects: Sequence[str] = (),
    *,
    write: bool = False,
    admin: bool = False,
    note: str = "",
) -> str:
    """Mint a token for the store served from ``store_dir``; return it (it is shown only once).

    Blocking (file I/O): call it from a CLI or a worker thread. A running server sees new tokens
    at once, and stops accepting removed ones within a second.

    Args:
        projects: the projects it may access (``"*"``: all); empty only for an admin token.
        write: whether it may upload blobs and append to those projects.
        admin: whether it may do anything, including minting tokens through the server.
        note: a label kept next to the hash (who it is for).
    """
    token, digest, grant = new_token(projects, write=write, admin=admin, note=note)
    path = tokens_path(store_dir)
    with _locked(path):
        entries = _read(path)
        entries[digest] = grant
        _write(path, entries)
    return token


def new_token(
    projects: Sequence[str], *, write: bool, admin: bool, note: str
) -> tuple[str, str, Grant]:
    """A new random token, its hash and its grant (checked: see :func:`create_token`)."""
    for project in projects:
        if project != ALL:
            check_name(project, "project")
    if not projects and not admin:
        raise InvalidInputError("a token needs at least one --project (or '*'), or --admin")
    token = _PREFIX + secrets.token_urlsafe(32)
    digest = hash_token(token)
    return (
        token,
        digest,
        Grant(digest[:12], tuple(projects), write or admin, admin, note, time.time()),
    )


def find_token(grants: Sequence[Grant], token_id: str, where: str) -> Grant:
    """The one grant whose id starts with ``token_id``.

    Raises:
        NotFoundError: none does.
        InvalidInputError: the id is empty, or several do.
    """
    if not token_id:
        raise InvalidInputError("give the id of the token to revoke (`asyncart token list`)")
    found = [g for g in grants if g.id.startswith(token_id)]
    if len(found) == 1:
        return found[0]
    listing = f"`asyncart token list --store {where}` shows the ids"
    if not found:
        raise NotFoundError(f"no token has id {token_id!r}; {listing}")
    raise InvalidInputError(f"{len(found)} tokens have ids starting {token_id!r}; {listing}")


def list_tokens(store_dir: str | os.PathLike[str]) -> list[Grant]:
    """The tokens of the store served from ``store_dir``, oldest first (never their secrets).

    Blocking (file I/O). A missing tokens file means no tokens.

    Raises:
        NotFoundError: ``store_dir`` does not exist (a mistyped path).
    """
    if not os.path.isdir(store_dir):
        raise NotFoundError(f"{store_dir} is not a directory: give the served store's")
    grants = load_grants(tokens_path(store_dir)).values()
    return sorted(grants, key=lambda g: (g.created or 0.0, g.id))


def revoke_token(store_dir: str | os.PathLike[str], token_id: str) -> Grant:
    """Remove the token whose id is (or starts with) ``token_id``; return what it granted.

    Blocking (file I/O). A running server refuses the token within a second.

    Raises:
        NotFoundError: no token has that id; nothing changed.
        InvalidInputError: the id is empty or the prefix matches several tokens; nothing changed.
    """
    if not token_id:
        raise InvalidInputError("give the id of the token to revoke (`asyncart token list`)")
    path = tokens_path(store_dir)
    if not path.exists():  # and do not create the directory of a mistyped path
        raise NotFoundError(f"{path} does not exist: no tokens to revoke (is --store right?)")
    with _locked(path):
        entries = _read(path)
        grant = find_token(list(entries.values()), token_id, str(store_dir))
        del entries[next(h for h, g in entries.items() if g is grant)]
        _write(path, entries)
    return grant


def load_grants(path: Path) -> dict[str, Grant]:
    """Read the hashed tokens (blocking); a missing file means no tokens."""
    try:
        return _read(path)
    except FileNotFoundError:
        return {}


def _read(path: Path) -> dict[str, Grant]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise InvalidInputError(f"{path} is not valid JSON ({e}); fix or remove it") from None
    return {
        entry["sha256"]: Grant(
            entry["id"],
            tuple(entry["projects"]),
            entry["write"],
            entry["admin"],
            entry.get("note", ""),
            entry.get("created"),
        )
        for entry in raw["tokens"]
    }


def _write(path: Path, entries: dict[str, Grant]) -> None:
    body = {"tokens": [{"sha256": h, **asdict(g)} for h, g in entries.items()]}
    atomic_write(path, json.dumps(body, indent=1).encode(), mode=0o600)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class TokenBook(Protocol):
    """Where a server's tokens are kept: :class:`TokenFile` beside a local store, a table in
    the database of a PostgreSQL + S3 store (so that every replica sees the same tokens)."""

    async def create(
        self, projects: Sequence[str], *, write: bool = False, admin: bool = False, note: str = ""
    ) -> str:
        """Mint a token (see :func:`create_token`); return it."""
        ...

    async def list(self) -> list[Grant]:
        """Every token's grant, oldest first."""
        ...

    async def revoke(self, token_id: str) -> Grant:
        """Remove the token whose id is (or starts with) ``token_id`` (see :func:`revoke_token`)."""
        ...

    async def load(self) -> dict[str, Grant] | None:
        """Every grant by token hash, or None when nothing changed since the last load."""
        ...


class TokenFile:
    """The tokens of a local store, in its ``tokens.json`` (see the module's docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.store_dir = self.path.parent
        self._version: tuple[int, int, int] | None = None

    async def create(
        self, projects: Sequence[str], *, write: bool = False, admin: bool = False, note: str = ""
    ) -> str:
        mint = functools.partial(create_token, write=write, admin=admin, note=note)
        return await anyio.to_thread.run_sync(mint, self.store_dir, projects)

    async def list(self) -> list[Grant]:
        return await anyio.to_thread.run_sync(list_tokens, self.store_dir)

    async def revoke(self, token_id: str) -> Grant:
        return await anyio.to_thread.run_sync(revoke_token, self.store_dir, token_id)

    async def load(self) -> dict[str, Grant] | None:
        return await anyio.to_thread.run_sync(self._load)

    def _load(self) -> dict[str, Grant] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            changed, self._version = self._version is not None, None
            return {} if changed else None
        # Every write renames a new file into place: the inode and size tell two writes apart
        # even within one mtime tick (a revoke right after a create).
        version = (st.st_mtime_ns, st.st_ino, st.st_size)
        if version == self._version:
            return None
        grants, self._version = load_grants(self.path), version
        return grants


def token_book(store: Store) -> TokenBook:
    """Where the tokens of ``store`` are kept: beside a local store, or in its database."""
    if isinstance(store, LocalStore):
        return TokenFile(tokens_path(store.root))
    from .._backends.pg_s3 import PostgresS3Store  # asyncpg: only for such a store

    if isinstance(store, PostgresS3Store):
        from ._pg_tokens import PostgresTokens

        return PostgresTokens(store.log)
    raise InvalidInputError(f"cannot serve {store.location}: serve a local or PostgreSQL store")


class Grants:
    """The server's view of its tokens, reloaded when they change.

    One reload runs at a time, and requests that arrive while one runs share it: a flood of
    unknown tokens costs the token book (a database table, for some stores) one read at a
    time, not one per request.
    """

    def __init__(self, book: TokenBook) -> None:
        self.book = book
        self._grants: dict[str, Grant] = {}
        self._checked = float("-inf")  # when the last reload started
        self._lock = anyio.Lock()

    async def refresh(self, since: float | None = None) -> None:
        """Reload the tokens if they changed, unless a reload started after ``since`` (a
        :func:`time.monotonic` time; None: reload now)."""
        async with self._lock:
            if since is not None and self._checked >= since:
                return  # a reload that started after the caller asked has finished
            self._checked = time.monotonic()
            grants = await self.book.load()
            if grants is not None:
                self._grants = grants

    @property
    def stale(self) -> bool:
        """Whether the tokens should be checked again."""
        return time.monotonic() - self._checked > 1.0

    def lookup(self, token: str) -> Grant | None:
        """The grant of ``token``, or None for an unknown token."""
        return self._grants.get(hash_token(token))
