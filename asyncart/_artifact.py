"""The Artifact: a draft that collects files, or a committed version to read and build upon."""

from __future__ import annotations

import contextlib
import copy
import functools
import getpass
import os
import shutil
import stat
import warnings
from bisect import bisect_right
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, overload

import anyio
import anyio.to_thread

from ._backends.base import Store, UploadItem
from ._backends.fileio import kind
from ._diff import ManifestDiff, diff_manifests
from ._domain.events import Change, Entry, FilesAdded, FilesRemoved
from ._domain.fold import CollectionState, Version, matching_paths
from ._domain.manifest import EntryList, Manifest, Overlay
from ._errors import (
    AsyncartWarning,
    InvalidInputError,
    MissingEntryError,
    MissingPathError,
    NotFoundError,
    SealedError,
    VerificationError,
)
from ._files import (
    DEFAULT_PER_PAGE,
    WRITE_MODES,
    ArtifactEntry,
    ArtifactFiles,
    DraftFiles,
    remove_others,
    tmp_name,
)
from ._history import ArtifactCollection, collection_summary
from ._lineage import RunInfo, actor_run_id, run_info, runs_using
from ._links import link, links_to, parse_target
from ._names import (
    PathTree,
    check_alias,
    check_entry_path,
    check_file_or_dir,
    check_name,
    check_prefix,
    check_tags,
    parse_ref,
)
from ._references import fetch_references, is_checked, reference_entries, split_refs
from ._repository import ENTRIES_PER_EVENT, AddedChunks, DraftSpec, Edit, Repository, Transfer
from ._retention import check_ttl
from ._store import holding_store, load_backend, open_store, prepare_store
from ._threads import HEAVY, maybe_thread, responsive
from ._transfer import (
    DEFAULT_CONCURRENCY,
    ProgressCallback,
    batches,
    download,
    hash_file,
    hash_files,
    hash_tree,
    run_pool,
)
from ._transfer import _prepare_dirs as prepare_dirs
from ._values import check_description, check_mapping

DEFAULT_PROJECT = "uncategorized"


@dataclass
class _Saved:
    """Where a committed version lives, and what it is."""

    repo: Repository
    project: str
    state: CollectionState
    version: Version
    manifest: Manifest


@dataclass
class _Loaded:
    """A committed version's editable fields as loaded: what ``save`` compares them with."""

    metadata: dict[str, Any]
    description: str | None
    tags: list[str]
    aliases: list[str]
    updated: float | None = None
    ttl: float | None = None


class Artifact:
    """A named, typed set of files.

    A new ``Artifact`` is a draft (``state`` ``"PENDING"``): add files to it, then log it with
    ``Run.log_artifact`` or ``save``. Logging makes it the committed version (``version`` like
    ``"v0"``, ``name`` like ``"mnist:v0"``, as in W&B) and returns it. A version's files never
    change; its ``metadata``, ``description``, ``tags`` and ``aliases`` can, stored by
    ``save()``. ``new_draft()`` starts the next version from it, without re-reading unchanged
    files.

    ``metadata`` is a JSON-compatible dict with str keys (NaN is stored as null, infinities are
    refused; see ``asyncart._values`` for the depth and size limits) and ``description`` a str.
    Both are checked and copied now, and checked again when the artifact is logged (so
    ``artifact.metadata["key"] = value`` works); a bad value is an ``InvalidInputError``.

    Example::

        artifact = asyncart.Artifact("mnist", "dataset", metadata={"source": "lecun"})
        await artifact.add_dir("data/")
        saved = await artifact.save(project="demo")
        print(saved.version, saved.digest)
    """

    _built: Manifest | None = None  # the draft's manifest, until its files change again
    _ttl: float | None = None  # a draft's ttl in seconds (a committed version's is its commit's)
    _new_files: DraftFiles | None = None  # where new_file writes, until the commit

    def __init__(
        self,
        name: str,
        type: str,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._name = check_name(name, "artifact name")
        self.type = check_name(type, "artifact type")
        self.description = check_description(description)
        self.metadata: dict[str, Any] = check_mapping(metadata, "metadata") or {}  # a deep copy
        self._tags: list[str] = []
        self._aliases: list[str] = []  # a draft's: added to those it is logged with
        self._loaded = _Loaded({}, None, [], [])  # a committed version's fields as loaded
        self._summary: ArtifactCollection | None = None
        self._deleted = False
        self._entries = Overlay()  # the parent's manifest (if any) and the changes over it
        self._sources = _Sources()  # the local file of each file added here
        self._changes: list[tuple[str, list[Any]]] = []  # ("add", entries) | ("remove", paths)
        self._parent: _Saved | None = None
        self._saved: _Saved | None = None
        self._sealed = False

    # -- what it is ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """``NAME:vN`` once committed (as W&B names a version), else the draft's ``NAME``;
        ``collection.name`` is the plain name of a committed one."""
        return f"{self._name}:{self.version}" if self._saved else self._name

    @property
    def source_name(self) -> str:
        """``NAME:vN`` of the version a link points at (see :meth:`link`), else :attr:`name`."""
        link = self._saved.version.link if self._saved else None
        return self.name if link is None else f"{link.source_name}:v{link.source_version}"

    @property
    def source_project(self) -> str | None:
        """The project of the version a link points at, else :attr:`project`."""
        link = self._saved.version.link if self._saved else None
        return self.project if link is None else link.source_project

    @property
    def source_version(self) -> str | None:
        """``"vN"`` of the version a link points at, else :attr:`version`."""
        link = self._saved.version.link if self._saved else None
        return self.version if link is None else f"v{link.source_version}"

    @property
    def is_link(self) -> bool:
        """Whether this version is a link to another collection's version (see :meth:`link`)."""
        return self._saved is not None and self._saved.version.link is not None

    @property
    def collection(self) -> ArtifactCollection | None:
        """The collection of a committed version (all the versions of its name) as it was when
        this version was loaded; None for a draft."""
        return self._summary

    @property
    def version(self) -> str | None:
        """``"vN"`` once committed, else None."""
        return f"v{self._saved.version.number}" if self._saved else None

    @property
    def state(self) -> str:
        """``"PENDING"`` for a draft, ``"COMMITTED"`` for a version, ``"DELETED"`` once
        :meth:`delete` deleted it, as W&B says."""
        if self._saved is None:
            return "PENDING"
        return "DELETED" if self._deleted or self._saved.version.deleted else "COMMITTED"

    def is_draft(self) -> bool:
        """Whether this artifact is a draft, not (yet) a committed version."""
        return self._saved is None

    @property
    def aliases(self) -> list[str]:
        """The aliases of this version when it was loaded (``latest`` among them); of a draft,
        those it is to get when logged (besides ``log_artifact``'s ``aliases``).

        Assign or change the list, then ``await artifact.save()`` to move them (``latest``
        cannot be added or removed: it follows the newest version)."""
        return self._aliases

    @aliases.setter
    def aliases(self, aliases: Sequence[str]) -> None:
        _check_aliases(aliases)
        self._aliases = list(dict.fromkeys(aliases))

    @property
    def tags(self) -> list[str]:
        """The version's tags (a list of str: 1-128 letters, digits, ``_``, ``.``, ``-`` and
        inner spaces each), set on a draft before it is logged, or changed on a committed
        version and stored with ``await artifact.save()``.

        Raises:
            InvalidInputError: on assignment, a tag that is not valid (checked again when the
                artifact is logged or saved, so ``artifact.tags.append(tag)`` works).
        """
        return self._tags

    @tags.setter
    def tags(self, tags: Sequence[str]) -> None:
        self._tags = check_tags(tags)

    @property
    def digest(self) -> str:
        """The manifest digest: BLAKE3 of the sorted (path, content digest) pairs."""
        return self._saved.version.commit.digest if self._saved else self.manifest.digest

    @property
    def manifest(self) -> Manifest:
        """The files: ``manifest.entries`` maps each path to its entry (digest, size)."""
        if self._saved is not None:
            return self._saved.manifest
        if self._built is None:
            self._built = self._entries.manifest()
        return self._built

    @property
    def project(self) -> str | None:
        return self._saved.project if self._saved else None

    @property
    def qualified_name(self) -> str:
        """``project/name:vN`` for a committed artifact, else the bare name."""
        return f"{self.project}/{self._name}:{self.version}" if self._saved else self._name

    @property
    def updated_at(self) -> datetime | None:
        """When this version was last edited (its metadata, description or tags), else when it
        was committed (UTC), as loaded; None for a draft."""
        if self._saved is None:
            return None
        return datetime.fromtimestamp(self._loaded.updated or self._saved.version.time, UTC)

    @property
    def file_count(self) -> int:
        """How many files the artifact has."""
        return self._file_count()

    @property
    def committed(self) -> bool:
        return self._saved is not None

    @property
    def created_at(self) -> datetime | None:
        """When this version was committed (UTC); None for a draft."""
        return datetime.fromtimestamp(self._saved.version.time, UTC) if self._saved else None

    @property
    def committed_by(self) -> str | None:
        """Who committed this version: ``run:ID`` or ``user:LOGIN``, followed by
        ``@token:TOKEN_ID`` when a server recorded it; None for a draft."""
        return self._saved.version.actor if self._saved else None

    @property
    def size(self) -> int:
        """Total bytes of the artifact's files."""
        return self.manifest.size

    @property
    def ttl(self) -> timedelta | None:
        """How long after its commit this version lives: the garbage collector (and
        :func:`asyncart.apply_retention`) deletes it once that has passed, aliases and all.

        A ``timedelta`` or None (the default: forever). Set it on a draft before it is logged;
        ``new_draft()`` inherits it, as in W&B. A draft whose content equals the latest
        version's commits nothing, so that version's ttl stays. On a committed version, set
        it (None: forever) and ``await artifact.save()`` to store it (a ``version.edited``
        record); it still counts from the commit.

        Raises:
            InvalidInputError: (setting) not a positive ``timedelta`` or None.
            SealedError: (setting) a draft that was logged already.
        """
        return None if self._ttl is None else timedelta(seconds=self._ttl)

    @ttl.setter
    def ttl(self, value: timedelta | None) -> None:
        if self._saved is None:
            self._check_open()
        self._ttl = check_ttl(value)

    def __repr__(self) -> str:
        state = self.qualified_name if self._saved else f"{self.name} (draft)"
        return f"<Artifact {state} type={self.type} files={len(self.manifest)}>"

    # -- building a draft ------------------------------------------------------------------

    async def add_file(
        self,
        local_path: str | os.PathLike[str],
        name: str | None = None,
        *,
        overwrite: bool = False,
        is_tmp: bool = False,
    ) -> Entry:
        """Add one file as ``name`` (default: the file's own name); hashes it now.

        With ``is_tmp`` (W&B's name), the name is made unique by content: the first hex digits
        of the digest go between its stem and suffixes (``data.csv`` becomes
        ``data.1a2b3c4d5e6f7a8b9c0d.csv``), so files of other content never clash.

        Only a regular file (or a symbolic link to one) can be added: a FIFO, a device like
        ``/dev/zero`` or a directory is refused without being opened.

        Raises:
            InvalidInputError: ``name`` is not a safe relative path (see ``check_entry_path``:
                also a name no filesystem can hold), it would be both a file and a directory
                (``x`` beside ``x/y``), the path holds other content and ``overwrite`` is
                False; or the file is not a regular file, or cannot be read.
            NotFoundError: the file does not exist.
        """
        self._check_open()
        local = os.fspath(local_path)
        path = check_entry_path(name if name is not None else os.path.basename(local))
        [entry] = await hash_files([(path, local)])
        if is_tmp:
            path = check_entry_path(tmp_name(path, entry.digest))
            entry = Entry(path, entry.digest, entry.size)
        await self._add([entry], [(path, local)], overwrite)
        return entry

    @contextlib.asynccontextmanager
    async def new_file(
        self, name: str, mode: str = "w", encoding: str | None = None, *, overwrite: bool = False
    ) -> AsyncIterator[anyio.AsyncFile[Any]]:
        """Write a file into the draft as ``name``: its content is added when the block ends.

        Yields an :class:`anyio.AsyncFile` opened with ``mode`` (``"w"``: text, in
        ``encoding``, default UTF-8; ``"wb"``: bytes; also ``"w+"``, ``"x"``...): its calls are
        awaited (``await f.write(...)``), so writing never blocks the event loop. The file
        lives in a folder of the system's temporary directory (``$TMPDIR``) until the draft is
        committed, and is removed then; if the block raises, nothing is added and the file is
        removed at once.

        Example::

            async with artifact.new_file("config/params.json") as f:
                await f.write(json.dumps(params))

        Raises:
            InvalidInputError: a bad ``name`` or ``mode``, or ``name`` is already in the draft
                and ``overwrite`` is False (checked before the block runs).
        """
        self._check_open()
        path = check_entry_path(name)
        if mode not in WRITE_MODES:
            modes = ", ".join(sorted(WRITE_MODES))
            raise InvalidInputError(f"new_file mode must be one of {modes}, not {mode!r}")
        if not overwrite and path in self._entries:
            raise InvalidInputError(
                f"{path!r} is already in {self.name}; pass overwrite=True or remove() it first"
            )
        if self._new_files is None:
            self._new_files = DraftFiles()
        local = await self._new_files.new_path(anyio.to_thread.run_sync)
        encoding = (encoding or "utf-8") if "b" not in mode else None
        file = anyio.wrap_file(
            await anyio.to_thread.run_sync(functools.partial(open, local, mode, encoding=encoding))
        )
        try:
            async with file:
                yield file
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.Path(local).unlink(missing_ok=True)
            raise
        await self.add_file(local, path, overwrite=overwrite)

    async def add_dir(
        self,
        local_path: str | os.PathLike[str],
        name: str | None = None,
        *,
        overwrite: bool = False,
        merge: bool = False,
        progress: ProgressCallback | None = None,
    ) -> Sequence[Entry]:
        """Add every file under a directory, as ``name/relative/path`` (default: no prefix).

        ``merge=True`` is W&B's name for ``overwrite=True``: a path already in the draft with
        other content takes the new content (without either, that is an ``InvalidInputError``).

        Files are regular files and symlinks to them. Anything else is skipped: FIFOs,
        devices and sockets (reading them would block or never end), symlinked directories
        (not followed: a link can loop, lead outside the tree, or add the same files under
        two paths), broken or looping links. Skipped paths are reported in one
        :class:`~asyncart.AsyncartWarning` per call (turn it into an error with
        ``warnings.simplefilter("error", asyncart.AsyncartWarning)``). A directory that cannot
        be listed, or a file name that is not UTF-8 or too long for an entry path, is an
        ``InvalidInputError`` naming it, and nothing is added (a version silently missing files
        would be worse).

        ``progress`` is called with a :class:`Progress` of the hashing, first with the totals,
        then after each batch of files.

        Returns the entries added, in path order (a read-only sequence).
        """
        self._check_open()
        overwrite = overwrite or merge
        local = os.fspath(local_path)
        prefix = check_entry_path(name.rstrip("/")) + "/" if name else ""
        async with responsive():  # walking and hashing run in a thread: the loop gets turns
            pairs, skipped = await anyio.to_thread.run_sync(_walk, local, prefix)
            if skipped:
                warnings.warn(_skipped_warning(local, skipped), stacklevel=2)
            heavy = len(pairs) > HEAVY
            try:
                tree = await hash_tree(pairs, progress=progress)
                if self._parent is None and not len(self._entries):
                    await maybe_thread(heavy, self._add_tree, tree, pairs)  # no Entry per file
                    return EntryList(tree)
                entries = await maybe_thread(heavy, tree.entries_at, 0, len(tree))
                await self._add(entries, pairs, overwrite)
                return entries
            finally:
                await maybe_thread(heavy, pairs.clear)  # a million strings: freed off the loop

    async def add_reference(
        self,
        uri: str,
        name: str | None = None,
        checksum: bool = True,
        max_objects: int | None = None,
        *,
        overwrite: bool = False,
    ) -> list[Entry]:
        """Add the file or files at ``uri`` as references: their bytes stay there, and
        ``download`` fetches them from it (nothing is uploaded to the store).

        ``uri`` is ``file:///path`` (a file, or a directory's regular files),
        ``http(s)://...`` (one file) or ``s3://BUCKET/KEY`` (the object at the key, else every
        object under ``KEY/``; ``?versionId=`` picks a version; endpoint and credentials come
        from the usual AWS variables, as for an S3 store). A file is added as ``name``
        (default: the last part of the URI's path); a directory or prefix as
        ``name/relative/path`` (default: its relative paths).

        With ``checksum`` the bytes are read now (once, off the event loop): the entry has
        their BLAKE3 digest and size, and a download verifies them. Without it nothing is read:
        the entry is tracked by its URI, as W&B does, its digest derived from the URI and the
        ETag if the source sends one, and a download takes the bytes as they are then.

        ``max_objects`` (default 10,000, as W&B) bounds the files of a directory or prefix.

        Returns the entries added, in path order.

        Raises:
            InvalidInputError: a bad URI or name, more files than ``max_objects``, or a path
                already in the draft with other content (without ``overwrite``).
            NotFoundError: nothing is at ``uri``.
            BackendUnavailableError: the source cannot be reached.
        """
        self._check_open()
        entries = await reference_entries(uri, name, checksum, max_objects)
        await self._add(entries, [], overwrite)
        return entries

    def _add_tree(self, manifest: Manifest, tree: _Tree) -> None:
        """Make the files of an empty root draft those of ``tree``, hashed as ``manifest``:
        the local files are known from the tree's folder."""
        self._entries = Overlay(manifest)  # for a root, the base holds files added here too
        self._sources = _Sources()
        self._sources.add_tree(tree)
        self._built = None

    def remove(self, path: str | os.PathLike[str] | Entry) -> None:
        """Remove a file, or with ``dir/`` (or a directory's name) everything under it.

        ``path`` is an entry path (a ``str`` or ``os.PathLike``), or an :class:`Entry` of
        the draft's manifest.

        Raises:
            MissingPathError: nothing in the draft matches ``path`` (a ``NotFoundError``).
        """
        self._check_open()
        path = path.path if isinstance(path, Entry) else os.fspath(path)
        check_prefix(path)
        keys = matching_paths(self._entries, path)
        if not keys:
            raise MissingPathError(
                f"cannot remove {path!r}: no such file or directory in {self.name}"
            )
        for key in keys:
            del self._entries[key]
            self._sources.pop(key)
        self._built = None
        self._record("remove", [path])

    async def _add(
        self, entries: list[Entry], sources: Sequence[tuple[str, str]], overwrite: bool
    ) -> None:
        """Add ``entries`` read from ``sources`` (entry path, local path), in one step; in a
        thread when there are many, or when the directories of many are still to be counted."""
        files = self._entries
        heavy = len(entries) > HEAVY or (not files.dirs_known and len(files.added) > HEAVY)
        await maybe_thread(heavy, self._add_now, entries, sources, overwrite)

    def _add_now(
        self, entries: list[Entry], sources: Sequence[tuple[str, str]], overwrite: bool
    ) -> None:
        tree = _Dirs(self._entries)
        # Check all first: a failed add changes nothing. The entries of one call cannot clash
        # with each other (one file, or one directory tree read from a filesystem).
        for entry in entries:
            old = self._entries.get(entry.path)
            if old is None:
                check_file_or_dir(entry.path, self._entries, tree, self.name)
            elif (old.digest, old.ref) != (entry.digest, entry.ref) and not overwrite:
                raise InvalidInputError(
                    f"{entry.path!r} is already in {self.name} with other content; "
                    "pass overwrite=True or remove() it first"
                )
        new = [e for e in entries if self._entries.get(e.path) != e]
        local = dict(sources)
        origin = _origin(sources)
        for entry in new:
            self._entries[entry.path] = entry
            if entry.ref is None:
                self._sources.add(entry.path, local[entry.path], origin)
            else:  # a reference: nothing to upload
                self._sources.pop(entry.path)
        if new:
            self._built = None
            self._record("add", new)

    def _record(self, kind: str, items: list[Any]) -> None:
        if self._parent is None:
            return  # a root's changes are its files, whatever the order they came in
        if self._changes and self._changes[-1][0] == kind:
            self._changes[-1][1].extend(items)
        else:
            self._changes.append((kind, list(items)))

    def _check_open(self) -> None:
        if self._saved is not None and self._sealed:
            raise SealedError(
                f"this draft of {self._name} was already logged, as {self.qualified_name}, which "
                "is committed and immutable; use new_draft()"
            )
        if self._saved is not None:
            raise SealedError(f"{self.qualified_name} is committed and immutable; use new_draft()")
        if self._sealed:
            raise SealedError(f"this draft of {self.name} was already logged; create a new one")

    # -- committing ------------------------------------------------------------------------

    async def _prepare(self) -> DraftSpec:
        """What to commit; built off the loop for large drafts."""
        self._check_open()
        files = self._entries
        changed = len(files.added) + len(files.removed)
        # each change rebuilds a page of a large parent's manifest: a few dozen take a while
        heavy = changed > HEAVY or (changed > 0 and len(files.base) > HEAVY)
        return await maybe_thread(heavy, self._spec)

    def _spec(self) -> DraftSpec:
        files = self._entries
        changes: Sequence[Change]
        uploads: Sequence[UploadItem]
        if self._parent is None:  # a root: its files are all added, made from its pages
            changes = AddedChunks(self.manifest)
            uploads = _Uploads(self.manifest, self._sources)
            if self.manifest.has_refs:  # references are not uploaded
                uploads = list(_without_refs(uploads))
        else:
            changes = [c for kind, items in self._changes for c in _as_events(kind, items)]
            uploads = [
                UploadItem(src, entry.digest, entry.size)
                for path, src in self._sources.items()
                for entry in (files.added[path],)  # a source is only kept for a file added here
            ]
        return DraftSpec(
            self.name,
            self.type,
            self._parent.version.number if self._parent else None,
            changes,
            self.manifest,
            uploads,
            check_mapping(self.metadata, "metadata"),  # again: it may have changed since
            check_description(self.description),
            ttl=self._ttl,
            tags=check_tags(self._tags),
        )

    def _target(
        self,
        project: str | None,
        store: str | os.PathLike[str] | Store | None,
        token: str | None = None,
    ) -> tuple[Repository, str]:
        if self._parent is not None:
            if project not in (None, self._parent.project):
                raise InvalidInputError(
                    f"a draft of {self._parent.project}/{self.name} is saved in its own project"
                )
            return self._parent.repo, self._parent.project
        repo = Repository(open_store(store, token))
        return repo, check_name(DEFAULT_PROJECT if project is None else project, "project")

    async def save(
        self,
        project: str | None = None,
        store: str | os.PathLike[str] | Store | None = None,
        *,
        aliases: Sequence[str] = (),
        progress: ProgressCallback | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        token: str | None = None,
    ) -> Artifact:
        """Commit this draft outside any run; or store the edits of a committed version.

        A draft becomes the version it committed (this object: ``version``, ``state`` ...
        are set), which is also returned. A draft made by ``new_draft()`` goes to its
        parent's project and store. ``token`` is for a server store (default
        ``$ASYNCART_TOKEN``).

        On a committed version, the changes made to its ``metadata``, ``description``,
        ``tags`` and ``aliases`` since it was loaded are stored (one ``version.edited`` record,
        and an ``aliases.moved`` one; nothing when nothing changed), and this object is
        reloaded. Its files cannot change (``SealedError``: use ``new_draft()``).

        Raises:
            InvalidInputError: an invalid value, or ``latest`` added or removed.
            NotFoundError: the version no longer exists (DeletedError: it was deleted).
        """
        if self._saved is not None:
            return await self._save_edits(project, aliases)
        await load_backend(store)
        repo, project = self._target(project, store, token)
        await prepare_store(repo.store, create=True)
        async with repo.store.held():
            return await self._commit(
                repo, project, aliases, _user_actor(), Transfer(concurrency, progress)
            )

    async def _commit(
        self, repo: Repository, project: str, aliases: Sequence[str], actor: str, transfer: Transfer
    ) -> Artifact:
        async with responsive():  # preparing, uploading and encoding run in threads
            return await self._commit_now(repo, project, aliases, actor, transfer)

    async def _commit_now(
        self, repo: Repository, project: str, aliases: Sequence[str], actor: str, transfer: Transfer
    ) -> Artifact:
        parent = self._parent
        if parent is not None and (project, repo.store.location) != (
            parent.project,
            parent.repo.store.location,
        ):
            raise InvalidInputError(
                f"a draft of {parent.project}/{self.name} (store {parent.repo.store.location}) "
                f"can only be logged there, not in {project} (store {repo.store.location})"
            )
        spec = await self._prepare()
        _check_aliases(aliases)
        wanted = list(dict.fromkeys([*aliases, *(a for a in self._aliases if a != "latest")]))
        state, version = await repo.commit(project, spec, wanted, actor, transfer)
        self._sealed = True
        await self._drop_new_files()
        return self._become(await load_version(repo, project, state, version))

    def _become(self, committed: Artifact) -> Artifact:
        """Make this (logged) draft the version it committed, as W&B does; return it."""
        self.__dict__.clear()
        self.__dict__.update(committed.__dict__)
        self._sealed = True  # its files were logged: SealedError says so
        return self

    @holding_store
    async def _save_edits(self, project: str | None, aliases: Sequence[str]) -> Artifact:
        saved = self._require_saved()
        if project not in (None, saved.project):
            raise InvalidInputError(f"{self.qualified_name} is saved in its own project")
        loaded = self._loaded
        metadata = check_mapping(self.metadata, "metadata") or {}
        description = check_description(self.description)
        tags = check_tags(self._tags)
        _check_aliases(aliases)
        wanted = list(dict.fromkeys([*self._aliases, *aliases]))
        _check_aliases(wanted)
        edit = Edit(
            metadata if metadata != loaded.metadata else None,
            (description or "") if description != loaded.description else None,
            [t for t in tags if t not in loaded.tags],
            [t for t in loaded.tags if t not in tags],
            _alias_list([a for a in wanted if a not in loaded.aliases]),
            _alias_list([a for a in loaded.aliases if a not in wanted]),
            (self._ttl or 0.0) if self._ttl != loaded.ttl else None,
        )
        number = saved.version.number
        await saved.repo.edit(saved.project, self._name, number, edit, _user_actor())
        state, version = await saved.repo.version(saved.project, self._name, number, None)
        reloaded = await load_version(saved.repo, saved.project, state, version)
        sealed = self._sealed
        self._become(reloaded)
        self._sealed = sealed
        return self

    async def _drop_new_files(self) -> None:
        """Remove the files ``new_file`` wrote, once the draft is logged (uploaded by then)."""
        if self._new_files is not None and (folder := self._new_files.take()):
            await anyio.to_thread.run_sync(shutil.rmtree, folder, True)

    # -- reading a committed version -------------------------------------------------------

    def _store_in_use(self) -> Store:
        return self._require_saved().repo.store

    def _require_saved(self) -> _Saved:
        if self._saved is None:
            raise InvalidInputError(f"{self.name} is a draft: log or save it first")
        return self._saved

    @holding_store
    async def download(
        self,
        root: str | os.PathLike[str] | None = None,
        path_prefix: str | None = None,
        *,
        progress: ProgressCallback | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> Path:
        """Write the exact files of this version under ``root``; return the root.

        ``root`` defaults to ``./artifacts/NAME:vN``. ``path_prefix`` (as in W&B, a plain
        string prefix: ``"images/"``, or ``"img"`` for ``img1.png`` too) downloads only the
        files whose path starts with it. A file already at an entry's path with the right
        size and digest is left in place and nothing is fetched for it (size first: a file of
        another size is not read), so downloading an unchanged version again costs a hash of
        the local files; other files at entry paths are replaced, and files that are not in
        the version are left alone (see :meth:`checkout`). Every byte written is verified
        against its digest.

        Raises:
            MissingPathError: no file of the version starts with ``path_prefix``.
        """
        saved = self._require_saved()
        entries: Manifest | list[Entry] = saved.manifest
        if path_prefix is not None:
            entries = await maybe_thread(
                len(saved.manifest) > HEAVY, _under_prefix, saved.manifest, path_prefix
            )
            if not entries:
                raise MissingPathError(
                    f"no file of {self.qualified_name} starts with {path_prefix!r}"
                )
        return await self._download_entries(entries, root, progress, concurrency)

    @holding_store
    async def _download_entries(
        self,
        entries: Manifest | Sequence[Entry],
        root: str | os.PathLike[str] | None,
        progress: ProgressCallback | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> Path:
        saved = self._require_saved()
        target = self._default_root(root)
        blobs = saved.repo.store.blobs
        refs: list[Entry] = []
        if not isinstance(entries, Manifest) or entries.has_refs:
            entries, refs = await maybe_thread(len(entries) > HEAVY, split_refs, entries)
        await download(blobs, entries, target, concurrency=concurrency, progress=progress)
        if refs:  # fetched from where they are: their bytes were never stored
            targets = await anyio.to_thread.run_sync(prepare_dirs, target, refs)
            await fetch_references(refs, targets, concurrency)
        return target

    def _default_root(self, root: str | os.PathLike[str] | None) -> Path:
        return Path(root) if root is not None else Path("artifacts") / self.name  # NAME:vN

    @holding_store
    async def checkout(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        progress: ProgressCallback | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> Path:
        """Make ``root`` hold exactly this version's files; return the root.

        As :meth:`download` (files with the right content are left in place, nothing fetched
        for them), then everything else under ``root`` is removed: files and symbolic links
        that are not in the version (links are never followed), and the directories left
        empty. ``root`` defaults to ``./artifacts/NAME:vN``.
        """
        saved = self._require_saved()
        target = await self.download(root, progress=progress, concurrency=concurrency)
        await anyio.to_thread.run_sync(remove_others, target, saved.manifest)
        return target

    async def verify(self, root: str | os.PathLike[str] | None = None) -> None:
        """Check that ``root`` (default ``./artifacts/NAME:vN``) holds every file of this
        version with the right bytes.

        Files under ``root`` that are not in the artifact are ignored.

        Raises:
            VerificationError: naming the missing and changed files (an ``IntegrityError``,
                and a ``ValueError`` as W&B raises).
        """
        saved = self._require_saved()
        base = self._default_root(root)
        work = await maybe_thread(
            len(saved.manifest) > HEAVY,
            batches,
            saved.manifest.entries.values(),
            _entry_size,
        )
        found = await run_pool(
            work,
            lambda batch: anyio.to_thread.run_sync(_verify_batch, base, batch),
            DEFAULT_CONCURRENCY,
        )
        problems = sorted(p for batch in found for p in batch)
        if problems:
            shown = "; ".join(problems[:20]) + (" ..." if len(problems) > 20 else "")
            raise VerificationError(
                f"{base} does not match {self.qualified_name}: {len(problems)} problems: {shown}"
            )

    def get_entry(self, name: str) -> ArtifactEntry:
        """The file ``name`` of this version: ``path``, ``digest``, ``size``, ``ref``, and
        ``await entry.download(root=None)``.

        Raises:
            MissingEntryError: no file of the version is ``name`` (a ``KeyError`` too, as
                W&B raises).
        """
        saved = self._require_saved()
        entry = saved.manifest.get(name) if isinstance(name, str) else None
        if entry is None:
            raise MissingEntryError(f"{self.qualified_name} has no file {name!r}")
        return ArtifactEntry(self, entry)

    def get_path(self, name: str) -> ArtifactEntry:
        """W&B's older name for :meth:`get_entry` (the same entry)."""
        return self.get_entry(name)

    def files(
        self, names: Sequence[str] | None = None, per_page: int = DEFAULT_PER_PAGE
    ) -> ArtifactFiles:
        """The files of this version, ``per_page`` at a time: ``async for entry in
        artifact.files()`` (or ``.pages()`` for lists); ``len()`` counts them.

        With ``names``, only those paths, in path order (names not in the version are left
        out, as in W&B).
        """
        return ArtifactFiles(self, self._require_saved().manifest, names, per_page)

    def new_draft(self) -> Artifact:
        """Start a new version from this one: add, remove or replace a few files, then log it.

        Unchanged files are never read, hashed or uploaded again.
        """
        saved = self._require_saved()
        draft = Artifact(self._name, self.type, self.description, dict(self.metadata))
        draft._parent = saved
        draft._ttl = saved.version.ttl
        draft._entries = Overlay(saved.manifest)  # the parent's entries are never copied
        return draft

    @holding_store
    async def logged_by(self) -> RunInfo | None:
        """The run that committed this version (None if it was saved outside any run); of a
        link, the run that linked it."""
        saved = self._require_saved()
        run_id = actor_run_id(saved.version.actor)
        if run_id is None:
            return None
        link_ = saved.version.link
        project = link_.run_project if link_ and link_.run_project else saved.project
        return run_info(project, run_id, await saved.repo.run(project, run_id))

    @holding_store
    async def used_by(self) -> list[RunInfo]:
        """The runs that used this version, in the order of their ids.

        Reads the notes of the project's runs and the streams of the runs that used it, not
        every run's stream.
        """
        saved = self._require_saved()
        return await runs_using(
            saved.repo, saved.project, (saved.project, self._name, saved.version.number)
        )

    async def diff(self, other: Artifact) -> ManifestDiff:
        """The paths ``other`` adds, removes and changes relative to this artifact.

        Works on drafts and committed versions alike; only paths and content digests count.
        Large manifests are compared in a worker thread, off the event loop.

        Example::

            change = await v0.diff(v1)
            print(change.added, change.removed, change.changed)
        """
        heavy = self._file_count() + other._file_count() > HEAVY
        return await maybe_thread(heavy, _diff_of, self, other)

    def _file_count(self) -> int:
        return len(self._saved.manifest) if self._saved else len(self._entries)

    @holding_store
    async def set_aliases(self, add: Sequence[str] = (), remove: Sequence[str] = ()) -> Artifact:
        """Point aliases at this committed version, or take them off it; return it reloaded.

        An added alias moves here from whichever version had it. ``latest`` always follows the
        newest version and cannot be set or removed.

        Raises:
            InvalidInputError: an invalid alias, ``latest``, or an alias both added and removed.
            NotFoundError: an alias to remove does not point at this version.
        """
        saved = self._require_saved()
        add, remove = _alias_list(add), _alias_list(remove)
        if both := set(add) & set(remove):
            raise InvalidInputError(f"cannot both add and remove {', '.join(sorted(both))}")
        number = saved.version.number
        state = await saved.repo.collection(saved.project, self._name)
        for alias in remove:
            if state.aliases.get(alias) != number:
                raise NotFoundError(
                    f"alias {alias!r} is not on {self.qualified_name} "
                    f"({_where(state.aliases.get(alias))})"
                )
        if add or remove:
            await saved.repo.move_aliases(
                saved.project, self._name, number, add, remove, _user_actor()
            )
        state, version = await saved.repo.version(saved.project, self._name, number, None)
        return await load_version(saved.repo, saved.project, state, version)

    @holding_store
    async def link(self, target_path: str, aliases: Sequence[str] | None = None) -> Artifact:
        """Link this committed version into the collection ``target_path`` (a registry, as
        W&B's ``link``); return the target's version that links it.

        ``target_path`` is ``name`` (in this version's project), ``project/name`` or
        ``entity/project/name`` (the entity is ignored). The link is the target's next
        version: its files are this version's (no byte is copied; downloads read this
        version's blobs), and ``source_name``, ``source_project`` and ``source_version`` name
        this version. Linking a version that the target links already makes no new version;
        ``aliases`` move to the one there. A link of a link links its source.

        Raises:
            InvalidInputError: a bad target or alias, the target is this version's own
                collection, or it holds artifacts of another type.
            NotFoundError: this version no longer exists (DeletedError: it was deleted).
        """
        return await self._link(target_path, aliases, _user_actor())

    async def _link(
        self,
        target_path: str,
        aliases: Sequence[str] | None,
        actor: str,
        run_project: str | None = None,
    ) -> Artifact:
        saved = self._require_saved()
        target = parse_target(target_path, saved.project)
        wanted = _alias_list(aliases or ())
        source = (saved.project, self._name, saved.version.number)
        state, version = await link(saved.repo, source, target, wanted, actor, run_project)
        return await load_version(saved.repo, target[0], state, version)

    @holding_store
    async def linked_artifacts(self) -> list[Artifact]:
        """The live versions of other collections that link this version (as W&B's
        ``linked_artifacts``; of a link, those that link its source). Reads every collection
        of the store: a scan, not an index."""
        saved = self._require_saved()
        link_ = saved.version.link
        source = (
            (saved.project, self._name, saved.version.number)
            if link_ is None
            else (link_.source_project, link_.source_name, link_.source_version)
        )
        found = []
        for project, name, version in await links_to(saved.repo, source):
            state = await saved.repo.collection(project, name)
            found.append(await load_version(saved.repo, project, state, version))
        return found

    @holding_store
    async def delete(self, delete_aliases: bool = False, *, dry_run: bool = False) -> None:
        """Delete this committed version, as one ``version.deleted`` event in the log.

        The version keeps its number (the next version is still one past the highest ever
        committed); resolving it raises :class:`DeletedError`, saying who deleted it and when;
        ``latest`` moves to the newest version left. Its records stay in the log, so ``audit``
        still replays it; :func:`asyncart.gc` reclaims the blobs only it held.

        Args:
            delete_aliases: also take its aliases off (``latest`` moves in any case); without
                it, a version with aliases is refused.
            dry_run: check that the deletion would be accepted now, and write nothing.

        Raises:
            HasAliasesError: it has aliases and ``delete_aliases`` is False (nothing deleted).
            NotFoundError: it does not exist in the store (DeletedError: deleted already).
            InvalidInputError: this artifact is a draft.
        """
        saved = self._require_saved()
        await saved.repo.delete(
            saved.project, self._name, saved.version.number, delete_aliases, _user_actor(), dry_run
        )
        self._deleted = self._deleted or not dry_run


class _Sources:
    """The local file of each entry added to a draft, kept as the folder it was read from (an
    int per entry, not a path string per entry: a million files cost a million strings)."""

    def __init__(self) -> None:
        self._origins: list[tuple[str, str]] = []  # (local prefix, entry path prefix)
        self._of: dict[str, int] = {}  # entry path -> its origin
        self._odd: dict[str, str] = {}  # entry path -> local file, where no origin fits
        self._tree: tuple[str, str] | None = None  # the origin of every other path (add_tree)

    def add_tree(self, tree: _Tree) -> None:
        """Take the folder ``tree`` was read from as the origin of every path not added
        otherwise (nothing kept per file but for the runs of files that do not fit it)."""
        self._tree = folder, prefix = _origin(tree[:1])
        for local, base, names in tree.runs:
            if not (base.startswith(prefix) and folder + base[len(prefix) :] == local):
                self._odd.update((base + name, local + name) for name in names)

    def local(self, path: str) -> str:
        """The local file of the entry added at ``path``."""
        index = self._of.get(path)
        if index is not None:
            folder, prefix = self._origins[index]
            return folder + path[len(prefix) :]
        found = self._odd.get(path)
        if found is not None:
            return found
        if self._tree is None:
            raise KeyError(path)
        folder, prefix = self._tree
        return folder + path[len(prefix) :]

    def add(self, path: str, local: str, origin: tuple[str, str]) -> None:
        folder, prefix = origin
        self._odd.pop(path, None)
        if path.startswith(prefix) and folder + path[len(prefix) :] == local:
            if not self._origins or self._origins[-1] != origin:
                self._origins.append(origin)
            self._of[path] = len(self._origins) - 1
        else:
            self._of.pop(path, None)
            self._odd[path] = local

    def pop(self, path: str) -> None:
        self._of.pop(path, None)
        self._odd.pop(path, None)

    def items(self) -> Iterator[tuple[str, str]]:
        """(entry path, local file) of every file added."""
        for path, index in self._of.items():
            folder, prefix = self._origins[index]
            yield path, folder + path[len(prefix) :]
        yield from self._odd.items()


class _Uploads(Sequence[UploadItem]):
    """The upload of every entry of a root draft's manifest, made a slice at a time when asked
    for (a commit of a million files holds no million items)."""

    def __init__(self, manifest: Manifest, sources: _Sources) -> None:
        self._manifest, self._sources = manifest, sources

    def __len__(self) -> int:
        return len(self._manifest)

    @overload
    def __getitem__(self, index: int) -> UploadItem: ...
    @overload
    def __getitem__(self, index: slice) -> list[UploadItem]: ...
    def __getitem__(self, index: int | slice) -> UploadItem | list[UploadItem]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            entries = self._manifest.entries_at(start, stop)
        elif -len(self) <= index < len(self):
            at = index % len(self)
            entries = self._manifest.entries_at(at, at + 1)
        else:
            raise IndexError(index)
        local = self._sources.local
        items = [UploadItem(local(e.path), e.digest, e.size) for e in entries]
        return items if isinstance(index, slice) else items[0]


def _origin(sources: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """A (local prefix, entry prefix) guessed from the first of ``sources``: those of a directory
    read by ``_walk`` share it. A guess only: ``_Sources.add`` keeps the local path of any
    entry it does not fit."""
    if not sources:
        return "", ""
    path, local = sources[0]
    common = 0  # the longest common suffix of the two, cut at a '/' of the entry path
    while common < min(len(path), len(local)) and path[-1 - common] == local[-1 - common]:
        common += 1
    cut = path.find("/", len(path) - common) + 1 if common < len(path) else 0
    return local[: len(local) - (len(path) - cut)], path[:cut]


def _diff_of(old: Artifact, new: Artifact) -> ManifestDiff:
    return diff_manifests(old.manifest, new.manifest)


class _Dirs(PathTree):
    """The directories of a draft's files, as ``check_file_or_dir`` asks about them: counted
    by the draft's :class:`Overlay` (the parent's from its sorted manifest, never copied)."""

    def __init__(self, files: Overlay) -> None:
        super().__init__()
        self._files = files

    def is_dir(self, path: str) -> bool:
        return self._files.is_dir(path)


async def load_version(
    repo: Repository, project: str, state: CollectionState, version: Version
) -> Artifact:
    manifest = await repo.manifest(state, version)
    draft = version.draft
    artifact = Artifact(state.name, state.type)
    # as stored (not checked again: a read never fails on what was once accepted), but a copy
    artifact.description, artifact.metadata = draft.description, copy.deepcopy(draft.metadata or {})
    artifact._tags, artifact._aliases = list(draft.tags), sorted(version.aliases)
    artifact._loaded = _Loaded(
        copy.deepcopy(artifact.metadata),
        draft.description,
        list(draft.tags),
        list(artifact._aliases),
        version.edited,
        version.ttl,
    )
    artifact._ttl = version.ttl
    artifact._summary = collection_summary(project, state)
    artifact._saved = _Saved(repo, project, state, version, manifest)
    return artifact


async def load_artifact(repo: Repository, ref: str, default_project: str) -> Artifact:
    """Resolve ``[project/]name[:alias|:vN]`` to a committed artifact."""
    parsed = parse_ref(ref)
    project = parsed.project or default_project
    state, version = await repo.version(project, parsed.name, parsed.version, parsed.alias)
    return await load_version(repo, project, state, version)


def _as_events(kind: str, items: list[Any]) -> list[Change]:
    if kind == "remove":
        return [FilesRemoved("", items)]
    return [
        FilesAdded("", items[i : i + ENTRIES_PER_EVENT])
        for i in range(0, len(items), ENTRIES_PER_EVENT)
    ]


def _check_aliases(aliases: Sequence[str]) -> None:
    if isinstance(aliases, str):
        raise InvalidInputError("aliases must be a list of names, not a string")
    for alias in aliases:
        if alias != "latest":
            check_alias(alias)


def _alias_list(aliases: Sequence[str]) -> list[str]:
    _check_aliases(aliases)
    if "latest" in aliases:
        raise InvalidInputError("'latest' always points at the newest version; it cannot be moved")
    return list(dict.fromkeys(aliases))


def _where(number: int | None) -> str:
    return "it is not set" if number is None else f"it points at v{number}"


def _user_actor() -> str:
    try:
        return f"user:{getpass.getuser()}"
    except Exception:  # no login name (some containers)
        return "user:unknown"


class _Tree(Sequence[tuple[str, str]]):
    """The (entry path, local path) of every file under a folder, sorted by entry path, kept as
    runs of files of one folder: a name per file, not two paths and a tuple (a million tuples
    also make the garbage collector's passes long)."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, str, list[str]]] = []  # (local prefix, entry prefix, names)
        self._ends: list[int] = []  # the position after each run

    def add(self, local: str, prefix: str, names: list[str]) -> None:
        self.runs.append((local, prefix, names))
        self._ends.append(len(self) + len(names))

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    @overload
    def __getitem__(self, index: int) -> tuple[str, str]: ...
    @overload
    def __getitem__(self, index: slice) -> list[tuple[str, str]]: ...
    def __getitem__(self, index: int | slice) -> tuple[str, str] | list[tuple[str, str]]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            return (
                [self[i] for i in range(start, stop, step)]
                if step != 1
                else self._span(start, stop)
            )
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return self._span(index % len(self), index % len(self) + 1)[0]

    def _span(self, start: int, stop: int) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        run = bisect_right(self._ends, start)
        while start < stop:
            local, prefix, names = self.runs[run]
            first = self._ends[run] - len(names)
            chosen = names[start - first : stop - first]
            out += zip([prefix + n for n in chosen], [local + n for n in chosen], strict=True)
            start, run = self._ends[run], run + 1
        return out

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for local, prefix, names in self.runs:
            for name in names:
                yield prefix + name, local + name

    def clear(self) -> None:
        """Free the runs one at a time (called in a worker thread): a million names freed by
        one statement held the GIL for 40 ms, the loop waiting all along."""
        runs, self.runs, self._ends = self.runs, [], []
        while runs:
            runs.pop()


def _walk(root: str, prefix: str) -> tuple[_Tree, list[str]]:
    """(``prefix`` + relative POSIX path, local path) of every file under ``root``, sorted; and
    the paths skipped (not a regular file, a directory or a link to a file), with why.

    Each folder's children are taken in the order of their entry paths (a folder's name sorts
    as itself followed by '/'), depth first: then every path comes out sorted, with no sort of
    them all."""
    if not os.path.isdir(root):
        raise NotFoundError(f"no such directory: {root}")
    tree, skipped = _Tree(), list[str]()
    stack = [(root, prefix, _children(root, prefix, len(prefix), skipped))]
    while stack:
        folder, base, children = stack[-1]
        names = []
        while children and not children[-1][1]:  # the files up to the next folder
            names.append(children.pop()[0])
        if names:
            tree.add(os.path.join(folder, ""), base, names)
        if not children:
            stack.pop()
            continue
        name = children.pop()[0]
        inner, inside = os.path.join(folder, name), f"{base}{name}/"
        stack.append((inner, inside, _children(inner, inside, len(prefix), skipped)))
    return tree, sorted(skipped)


def _children(folder: str, base: str, cut: int, skipped: list[str]) -> list[tuple[str, bool]]:
    """The files and folders of ``folder`` as (name, is a folder), last first in path order;
    what is neither goes to ``skipped``."""
    out = []
    try:
        with os.scandir(folder) as entries:  # its file types need no stat per file
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    out.append((entry.name, True))
                elif _is_file(entry):
                    check_entry_path(base + entry.name)
                    out.append((entry.name, False))
                else:
                    skipped.append(f"{(base + entry.name)[cut:]!r} ({_what(entry)})")
    except OSError as e:  # a folder left out would be a version missing files
        raise InvalidInputError(f"cannot list {folder}: {e.strerror}") from None
    out.sort(key=lambda child: child[0] + "/" if child[1] else child[0], reverse=True)
    return out


def _is_file(entry: os.DirEntry[str]) -> bool:
    """A regular file, or a symlink to one; not a broken or looping link, nor a device."""
    try:
        return entry.is_file()
    except OSError:
        return False


def _what(entry: os.DirEntry[str]) -> str:
    """What a skipped directory entry is, for the warning."""
    try:
        own = entry.stat(follow_symlinks=False).st_mode
        if not stat.S_ISLNK(own):
            return kind(own)
        return f"a link to {kind(os.stat(entry.path).st_mode)}"
    except OSError:
        return "a broken or looping link"


def _skipped_warning(root: str, skipped: list[str]) -> AsyncartWarning:
    shown = "; ".join(skipped[:20]) + (" ..." if len(skipped) > 20 else "")
    return AsyncartWarning(
        f"add_dir({root!r}) skipped {len(skipped)} paths that are neither regular files nor "
        f"directories: {shown}"
    )


def _verify_batch(root: Path, entries: list[Entry]) -> list[str]:
    problems = []
    for entry in entries:
        if not is_checked(entry):
            continue  # an unchecked reference: no content to compare with (W&B's too)
        try:
            digest, size = hash_file(str(root / entry.path), entry.size)
        except NotFoundError:
            problems.append(f"missing {entry.path}")
            continue
        except InvalidInputError:  # a directory, FIFO ... in its place, or not readable
            problems.append(f"unreadable {entry.path}")
            continue
        if (digest, size) != (entry.digest, entry.size):
            problems.append(f"changed {entry.path}")
    return problems


def _without_refs(uploads: _Uploads) -> Iterator[UploadItem]:
    manifest, local = uploads._manifest, uploads._sources.local
    for entry in manifest.iter_entries():
        if entry.ref is None:
            yield UploadItem(local(entry.path), entry.digest, entry.size)


def _entry_size(entry: Entry) -> int:
    return entry.size


def _under_prefix(manifest: Manifest, prefix: str) -> list[Entry]:
    return list(manifest.under(prefix))
