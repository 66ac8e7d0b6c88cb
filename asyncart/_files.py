"""The files of a version as W&B users reach for them: one entry, a paged listing, a checkout
that mirrors a version, and the temporary files that ``new_file`` writes into a draft."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

import anyio

from ._domain.events import Entry
from ._domain.manifest import Manifest
from ._errors import InvalidInputError, NotFoundError
from ._references import ref_uri
from ._threads import HEAVY, maybe_thread

if TYPE_CHECKING:
    from ._artifact import Artifact

DEFAULT_PER_PAGE = 1_000
"""Entries per page of :meth:`Artifact.files` (W&B's default is 50; a page here is decoded
from memory, so larger pages cost less per entry)."""

TMP_DIGEST_CHARS = 20
"""Hex digits of the content digest in the name of a file added with ``is_tmp=True`` (as W&B)."""


class ArtifactEntry:
    """One file of a committed version (W&B's ``ArtifactManifestEntry``).

    Attributes:
        path: its path in the version (``dir/file.txt``).
        digest: its content digest (BLAKE3, hex).
        size: its size in bytes.
        ref: the URI it was added from by ``add_reference`` (its bytes are fetched from
            there); None for a file stored in the blob store.
    """

    __slots__ = ("_artifact", "_ref", "digest", "path", "ref", "size")

    def __init__(self, artifact: Artifact, entry: Entry) -> None:
        self._artifact = artifact
        self.path, self.digest, self.size = entry.path, entry.digest, entry.size
        self._ref = entry.ref
        self.ref: str | None = None if entry.ref is None else ref_uri(entry.ref)

    async def download(self, root: str | os.PathLike[str] | None = None) -> Path:
        """Write this file under ``root`` (default: the artifact's, ``./artifacts/NAME:vN``)
        at its path, verified; return the file's local path. A file already there with the
        right size and digest is left in place, and nothing is fetched."""
        target = await self._artifact._download_entries([self.entry], root)
        return target / self.path

    @property
    def entry(self) -> Entry:
        """The manifest's :class:`~asyncart.Entry` (path, digest, size, ref)."""
        return Entry(self.path, self.digest, self.size, self._ref)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ArtifactEntry):
            return NotImplemented
        return (self.path, self.digest, self.size, self.ref) == (
            other.path,
            other.digest,
            other.size,
            other.ref,
        )

    def __hash__(self) -> int:
        return hash((self.path, self.digest))

    def __repr__(self) -> str:
        return f"<ArtifactEntry {self.path} size={self.size} digest={self.digest[:12]}>"


class ArtifactFiles:
    """The files of a committed version, a page at a time (W&B's ``artifact.files()``).

    ``async for entry in artifact.files()`` yields :class:`ArtifactEntry` objects in path
    order; ``async for page in artifact.files().pages()`` yields lists of ``per_page`` of
    them. Only the page being read is made: listing a version of a million files holds
    ``per_page`` entries at a time, never the whole list. ``len()`` is the number of files.
    """

    def __init__(
        self, artifact: Artifact, manifest: Manifest, names: Sequence[str] | None, per_page: int
    ) -> None:
        if isinstance(per_page, bool) or not isinstance(per_page, int) or per_page < 1:
            raise InvalidInputError(f"per_page must be an int >= 1, got {per_page!r}")
        if isinstance(names, str):
            raise InvalidInputError("names must be a list of paths, not a string")
        self._artifact, self._manifest, self.per_page = artifact, manifest, per_page
        self._names = None if names is None else list(names)
        self._named: list[Entry] | None = None  # the entries of ``names``, once looked up

    def _lookup(self) -> list[Entry]:
        """The entries of ``names`` in the version, in path order (others left out, as W&B)."""
        if self._named is None:
            assert self._names is not None
            found = (self._manifest.get(n) for n in set(self._names) if isinstance(n, str))
            self._named = sorted((e for e in found if e is not None), key=lambda e: e.path)
        return self._named

    def __len__(self) -> int:
        return len(self._manifest) if self._names is None else len(self._lookup())

    async def pages(self) -> AsyncIterator[list[ArtifactEntry]]:
        """The entries, ``per_page`` at a time (a large page is made in a worker thread)."""
        if self._names is not None:
            await maybe_thread(len(self._names) > HEAVY, self._lookup)
        heavy = self.per_page > HEAVY
        for start in range(0, len(self), self.per_page):
            yield await maybe_thread(heavy, self._page, start)

    def _page(self, start: int) -> list[ArtifactEntry]:
        stop = start + self.per_page
        if self._names is not None:
            entries = self._lookup()[start:stop]
        else:
            entries = self._manifest.entries_at(start, stop)
        return [ArtifactEntry(self._artifact, e) for e in entries]

    async def __aiter__(self) -> AsyncIterator[ArtifactEntry]:
        async for page in self.pages():
            for entry in page:
                yield entry

    def __repr__(self) -> str:
        return f"<ArtifactFiles of {self._artifact.qualified_name}: {len(self)} files>"


def remove_others(root: Path, manifest: Manifest) -> list[str]:
    """Remove everything under ``root`` that is not a file of ``manifest`` (blocking): other
    files, links (never followed) and the directories left empty. Return the removed paths,
    relative to ``root`` (a directory's with a final ``/``), sorted.

    Each removal is relative to its folder's open descriptor: a directory swapped for a link
    meanwhile cannot lead it outside ``root``.

    Raises:
        InvalidInputError: something cannot be removed (naming it, and why).
    """
    removed: list[str] = []
    for folder, dirs, files, fd in os.fwalk(root, topdown=False):
        base = os.path.relpath(folder, root)
        prefix = "" if base == "." else base.replace(os.sep, "/") + "/"
        for name in files:
            if prefix + name not in manifest:
                _remove(os.unlink, name, fd, prefix + name, root, removed)
        for name in dirs:  # walked already (bottom up): empty now, or holding version files
            if stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                _remove(os.unlink, name, fd, prefix + name, root, removed)  # not followed
            else:
                _remove(os.rmdir, name, fd, prefix + name + "/", root, removed)
    return sorted(removed)


def _remove(
    how: Callable[..., None], name: str, fd: int, path: str, root: Path, removed: list[str]
) -> None:
    try:
        how(name, dir_fd=fd)
    except OSError as e:
        if how is os.rmdir and e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return  # it holds files of the version
        raise InvalidInputError(
            f"cannot remove {path!r} under {root}, which is not in the version: {e.strerror or e}"
        ) from None
    removed.append(path)


def tmp_name(name: str, digest: str) -> str:
    """``name`` made unique by content, as W&B's ``is_tmp``: the digest's first hex digits
    between the stem and the suffixes (``dir/data.csv`` -> ``dir/data.1a2b....csv``)."""
    folder, _, base = name.rpartition("/")
    stem, dot, suffixes = base.partition(".")
    unique = digest[:TMP_DIGEST_CHARS]
    base = f"{stem}.{unique}{dot}{suffixes}" if stem else f"{unique}{dot}{suffixes}"
    return f"{folder}/{base}" if folder else base


WRITE_MODES = frozenset({"w", "wb", "w+", "wb+", "w+b", "x", "xb"})


class DraftFiles:
    """The folder of the files ``new_file`` wrote for one draft: made on first use in the
    system's temporary directory (``$TMPDIR``), removed once the draft is committed (or, if it
    never is, when the draft is garbage collected or the program exits)."""

    def __init__(self) -> None:
        self._folder: str | None = None
        self._count = 0

    async def new_path(self, run: Callable[[Callable[[], str]], Awaitable[str]]) -> str:
        """A fresh path in the folder (made by ``run``, a way to call off the loop)."""
        if self._folder is None:
            self._folder = await run(lambda: tempfile.mkdtemp(prefix="asyncart-new-file-"))
        self._count += 1
        return os.path.join(self._folder, f"file-{self._count}")

    def take(self) -> str | None:
        """The folder, to remove now (None if none was made); the next file makes another."""
        folder, self._folder = self._folder, None
        return folder

    def __del__(self) -> None:
        if self._folder is None:
            return
        # a draft dropped without a commit: removed in a thread, as this may run on the loop
        try:
            threading.Thread(target=shutil.rmtree, args=(self._folder, True)).start()
        except RuntimeError:  # the interpreter is shutting down: no more threads
            shutil.rmtree(self._folder, ignore_errors=True)


async def artifact_from_path(
    path: str | os.PathLike[str], name: str | None, type: str | None, run_id: str
) -> Artifact:
    """The draft W&B's ``run.log_artifact(path, name=None, type=None)`` builds: a directory's
    files, or one file, named ``run-RUN_ID-BASENAME`` and typed ``unspecified`` by default.

    Raises:
        NotFoundError: nothing is at ``path``.
        InvalidInputError: the name (given or made) is not a valid artifact name.
    """
    from ._artifact import Artifact  # the artifact module imports this one

    local = os.fspath(path)
    base = PurePath(local).name
    artifact = Artifact(name or f"run-{run_id}-{base}", type or "unspecified")
    where = anyio.Path(local)
    if await where.is_dir():
        await artifact.add_dir(local)
    elif await where.exists():
        await artifact.add_file(local)
    else:
        raise NotFoundError(f"cannot log {local}: no such file or directory")
    return artifact
