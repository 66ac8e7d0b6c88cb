"""Which blobs a token may see: those its projects' logs reference, and those it uploaded
(``_seen.py``: shared by the replicas of a PostgreSQL + S3 store).

Blobs are stored once for every project (dedup), but a token learns of a blob only through a
project it may read: ``missing`` calls a blob it may not see missing, and a read of it is a 404,
the same as for a blob that is not stored at all. A token that uploads such a blob again gets a
normal answer while the store keeps the bytes it has; from then on the token sees the blob, so
its own commit flow (missing, upload, flush, append) works.

The index is built per project, lazily (on the first question about it), from the project's
collection streams: every file entry of any version or draft, and every snapshot. Appends
through this server add to it as they go; a digest not found is looked for again after catching
up with the log, so appends by another server process on the same store are seen. Digests are
kept as 32 raw bytes, back to back (``_digests.py``: about 45 bytes each at a million, not an
object each). A token's uploads are asked about after the indexes in memory, for the digests
those do not show (on PostgreSQL that is a query).

A reference entry (``Entry.ref``, added by ``add_reference``) has no blob: its digest is neither
indexed nor checked, so it can never make a blob visible. A writer who records another
project's blob digest in a reference entry learns nothing (``missing`` and reads still answer as
before for that digest), and a reader of that entry fetches it from its URI, never from the
store.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field

import msgspec
from aiohttp import web

from .._backends.base import Store
from .._domain.events import FilesAdded, Record, VersionCommitted, VersionLinked
from .._domain.manifest import Manifest
from .._errors import AsyncartError, InvalidInputError
from .._repository import Repository, _decode_chain
from .._threads import HEAVY, maybe_thread
from ._digests import DigestSet
from ._http import grant_of
from ._seen import SeenBook
from ._tokens import ALL, Grant
from ._validate import read_ranges

_BIG = 256 << 10  # bytes of records above which decoding leaves the loop


@dataclass
class _Project:
    """The digests a project's collection streams reference, as of each stream's head."""

    heads: dict[str, tuple[int, str]] = field(default_factory=dict)  # stream -> (head, last hash)
    digests: DigestSet = field(default_factory=DigestSet)  # about 45 bytes each, untracked


class Scope:
    """The blob visibility index of one server process (see the module docstring)."""

    def __init__(self, store: Store, seen: SeenBook) -> None:
        self.store, self.seen = store, seen
        self._projects: dict[str, _Project] = {}

    async def hidden(self, grant: Grant, digests: Iterable[str]) -> set[str]:
        """The ``digests`` (hex, well formed) that ``grant`` may not see."""
        if grant.admin or ALL in grant.projects:
            return set()
        return {raw.hex() for raw in await self.unseen(grant, {bytes.fromhex(d) for d in digests})}

    async def unseen(self, grant: Grant, wanted: set[bytes]) -> set[bytes]:
        """The raw digests of ``wanted`` that ``grant`` may not see."""
        if grant.admin or ALL in grant.projects:
            return set()
        readable = [p for p in grant.projects if grant.can_read(p)]
        for catch_up in (False, True):  # what is indexed first; then catch up and look again
            for project in readable:
                if not wanted:
                    return set()
                index = await self._index(project, catch_up)
                wanted = await index.digests.missing(wanted)
            if wanted and not catch_up:  # uploads: maybe a database query, so after memory
                wanted = wanted - await self.seen.uploaded(grant.id, wanted)
        return wanted

    async def refuse_unseen(
        self, grant: Grant, records: list[Record], into: Referenced | None = None
    ) -> None:
        """Refuse records that reference blobs ``grant`` may not see: recording a digest must
        not be a way to read (or learn of) another project's blob. Upload it first. The
        blobs they reference are gathered ``into`` (for :meth:`appended`), if given.

        A link (``version.linked``) must name a source project the token may read, and a
        live source version whose manifest digest is the link's; its snapshot must hold that
        manifest (the link's readers see the files it lists: a snapshot of the writer's making
        must not list another project's blobs).

        Raises:
            InvalidInputError: naming one such digest, or such a source.
        """
        for record in records:
            body = record.body
            if isinstance(body, VersionLinked):
                if not grant.can_read(body.source_project):
                    raise InvalidInputError(
                        f"this token may not read project {body.source_project!r}: it cannot "
                        f"link {body.source_project}/{body.source_name}:v{body.source_version}"
                    )
                await self._check_link(body)
        many = sum(len(r.body.entries) for r in records if isinstance(r.body, FilesAdded))
        referenced = await maybe_thread(many > HEAVY, _referenced, records)
        if into is not None:
            into.add(referenced, any(isinstance(r.body, VersionLinked) for r in records))
        if unseen := await self.unseen(grant, referenced):
            raise InvalidInputError(
                f"the records reference {len(unseen)} blobs this token has not uploaded and "
                f"its projects do not reference, such as {min(unseen).hex()}: upload them first"
            )

    async def _check_link(self, body: VersionLinked) -> None:
        """Refuse a link whose source is not a live version of its digest, or whose snapshot
        does not hold that manifest."""
        source = f"{body.source_project}/{body.source_name}:v{body.source_version}"
        repo = Repository(self.store)
        try:
            state = await repo.collection(body.source_project, body.source_name)
        except AsyncartError:
            raise InvalidInputError(f"a link to {source}: no such collection") from None
        versions = state.versions
        version = (
            versions[body.source_version] if 0 <= body.source_version < len(versions) else None
        )
        if version is None or version.deleted is not None or version.commit.digest != body.digest:
            raise InvalidInputError(f"a link to {source}: not a live version of its digest")
        if body.snapshot is not None:
            try:
                data = await self.store.blobs.get_bytes(body.snapshot)
                held = await maybe_thread(len(data) > _BIG, Manifest.from_snapshot, data)
                digest = await maybe_thread(len(held) > 10_000, lambda: held.digest)
            except AsyncartError:
                digest = None
            if digest != body.digest:
                raise InvalidInputError(f"a link to {source}: its snapshot is not its manifest")

    async def uploaded(self, grant: Grant, digests: Iterable[str]) -> None:
        """Note that ``grant``'s token stored ``digests`` (verified): it may see them now."""
        if not (grant.admin or ALL in grant.projects):
            await self.seen.add(grant.id, {bytes.fromhex(d) for d in digests})

    async def appended(
        self, stream: str, first_seq: int, count: int, referenced: Referenced, last: str
    ) -> None:
        """Index an append of ``count`` records this server made to a collection stream at
        ``first_seq`` (if its project is indexed), from what its check gathered."""
        project, kind, _ = stream.split("/")
        index = self._projects.get(project)
        if kind != "artifacts" or index is None or not count or referenced.linked:
            return  # (a link's files are in its snapshot: the next catch-up reads it)
        if index.heads.get(stream, (0, ""))[0] != first_seq:
            return  # a catch-up read the stream meanwhile, or the index is behind it
        for digests in referenced.parts:
            await index.digests.add(digests)
        if index.heads.get(stream, (0, ""))[0] == first_seq:  # nobody caught up meanwhile
            index.heads[stream] = (first_seq + count, last)

    async def _index(self, project: str, catch_up: bool) -> _Project:
        index = self._projects.get(project)
        if index is None:
            index = self._projects[project] = _Project()
            catch_up = True
        if catch_up:
            for stream in await self.store.log.streams(f"{project}/artifacts/"):
                await self._catch_up(index, stream)
        return index

    async def _catch_up(self, index: _Project, stream: str) -> None:
        """Index the stream's records past what is indexed, a range at a time (a stream of a
        million files is never decoded at once); a damaged record (audit names it) and what
        follows it show nothing."""
        head, last = index.heads.get(stream, (0, ""))
        at = head
        async with aclosing(read_ranges(self.store.log, stream, head)) as ranges:
            async for payloads in ranges:
                big = sum(map(len, payloads)) > _BIG
                try:
                    records, last = await maybe_thread(
                        big, _decode_chain, stream, at, last, payloads
                    )
                except (AsyncartError, msgspec.MsgspecError):
                    break
                found = await maybe_thread(big, _referenced, records)
                await index.digests.add(found)
                for record in records:  # a link's readers read its source's files
                    if isinstance(record.body, VersionLinked) and record.body.snapshot is not None:
                        await index.digests.add(await self._linked(record.body.snapshot))
                at += len(records)
                del records, found
                if index.heads.get(stream, (0, ""))[0] != head:
                    return  # another catch-up of the stream went ahead: it goes on
                index.heads[stream] = (head := at, last)

    async def _linked(self, snapshot: str) -> set[bytes]:
        """The digests of a link's files, from its snapshot (none if it cannot be read)."""
        try:
            data = await self.store.blobs.get_bytes(snapshot)
            manifest = await maybe_thread(len(data) > _BIG, Manifest.from_snapshot, data, snapshot)
        except AsyncartError:
            return set()
        return {raw for d in manifest.iter_blob_digests() if (raw := _raw(d)) is not None}


class Referenced:
    """The raw digests of the blobs an append's records reference, gathered as its chunks
    are checked (each chunk's as one ``bytes`` of 32-byte digests: not an object per blob)
    for :meth:`Scope.appended`; ``linked``: some record is a link."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.linked = False

    def add(self, digests: set[bytes], linked: bool = False) -> None:
        self._parts.append(b"".join(digests))
        self.linked = self.linked or linked

    @property
    def parts(self) -> Iterator[list[bytes]]:
        """The digests, a chunk's at a time."""
        for joined in self._parts:
            yield [joined[i : i + 32] for i in range(0, len(joined), 32)]


def _referenced(records: list[Record]) -> set[bytes]:
    found: list[str] = []
    for record in records:
        match record.body:
            case FilesAdded(entries=entries):  # a reference entry claims no blob (see above)
                found += (e.digest for e in entries if e.ref is None)
            case VersionCommitted(snapshot=str(snapshot)) | VersionLinked(snapshot=str(snapshot)):
                found.append(snapshot)
    return {raw for d in found if (raw := _raw(d)) is not None}


def _raw(digest: str) -> bytes | None:
    """32 bytes; None for a malformed digest (in a record older than the server's checks)."""
    try:
        raw = bytes.fromhex(digest)
    except ValueError:
        return None
    return raw if len(raw) == 32 else None


SCOPE = web.AppKey("scope", Scope)


async def hidden(request: web.Request, digests: Iterable[str]) -> set[str]:
    """The ``digests`` the request's token may not see (it is told they are missing)."""
    return await request.app[SCOPE].hidden(await grant_of(request), digests)


async def uploaded(request: web.Request, digests: Iterable[str]) -> None:
    """Note that the request's token uploaded ``digests`` (verified, stored)."""
    await request.app[SCOPE].uploaded(await grant_of(request), digests)
