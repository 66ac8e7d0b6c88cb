"""The contracts every backend implements. Backends never import event types: they store bytes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

import msgspec


class UploadItem(msgspec.Struct, frozen=True):
    """A local file to store as the blob ``digest`` (computed earlier by ``add_file``).

    A Struct of plain values is not tracked by the garbage collector (a NamedTuple is, until a
    collection looks at it): a commit of 20,000 files made a gen-2 pass 60% longer, a 12 ms
    event-loop stall.
    """

    source: str
    digest: str
    size: int


MAX_NOTE = 1536
"""The most bytes of a stream's note (see :meth:`EventLog.append`)."""


class EventLog(Protocol):
    """Append-only streams of opaque records with optimistic concurrency.

    Besides records, each stream has a *note* (a few hundred bytes that the caller derives from
    the records, such as a collection's summary, replaced atomically with each append, so that
    listing many streams reads no records) and a *checkpoint* (larger derived state, saved
    now and then, advisory: a reader checks it against the records and falls back to them).
    Every cost here grows with what is asked for, never with the rest of the store.
    """

    async def read(self, stream: str, from_seq: int = 0, limit: int | None = None) -> list[bytes]:
        """Return the payloads of ``stream`` from ``from_seq`` on: ``limit`` of them, or all
        there are if fewer ([] for an unknown stream or past the head; None: to the head).
        Reads only those records' bytes (a server pages them: the client reads every page).

        Only durable records are returned: those of appends that returned (or will return).

        Raises:
            IntegrityError: a record fails its checksum, or an acknowledged record is missing
                (the log is damaged, not torn); the message names the stream and seq.
        """
        ...

    async def append(
        self,
        stream: str,
        payloads: Sequence[bytes],
        expected_seq: int,
        note: bytes = b"",
        *,
        epoch: int | None = None,
    ) -> int:
        """Append all ``payloads`` atomically at ``expected_seq``; return the new head.

        ``note`` (at most :data:`MAX_NOTE` bytes) becomes the stream's note in the same atomic
        step (a server ignores it and derives the note from the records it validated). Any
        number of payloads of any size is one all-or-nothing append (a backend that needs
        several requests for it stages them and publishes once).

        ``epoch``: the store's collection epoch (:meth:`Swept.epoch`) read before the blobs
        these records reference were checked. The append lands only if no garbage collection
        swept since, checked atomically with the append (see ``asyncart/_gc.py``).

        Raises:
            ConflictError: the stream's head is not ``expected_seq``.
            CollectedError: ``epoch`` is not the store's epoch any more; nothing appended.
        """
        ...

    async def streams(self, prefix: str = "") -> list[str]:
        """The names of the streams that start with ``prefix``, sorted. The cost grows with
        the streams under the prefix's folder (``project/artifacts/``), not with the store."""
        ...

    async def notes(self, prefix: str) -> dict[str, bytes]:
        """The note of each stream that starts with ``prefix`` (b"" if it has none)."""
        ...

    async def checkpoint(self, stream: str) -> bytes | None:
        """The checkpoint last saved for ``stream`` (None if none). It may be stale, damaged or
        lost: callers check what it claims against the records."""
        ...

    async def put_checkpoint(self, stream: str, data: bytes) -> None:
        """Save ``data`` as the stream's checkpoint (replacing the last one). Best effort: a
        crash may lose it, never the records. A backend whose server derives checkpoints
        itself ignores this."""
        ...


class BlobStore(Protocol):
    """Content-addressed blobs (BLAKE3 hex digests); writes are idempotent, reads verified."""

    async def missing(self, sizes: Mapping[str, int]) -> set[str]:
        """The digests of ``sizes`` (digest -> size in bytes) that are not stored yet.

        A stored blob whose size differs counts as missing (a power cut can leave a short or
        empty file under its final name): the store moves that file aside, never deleting it,
        so that the upload that follows stores a good copy. A stored file of another size that
        still hashes to its digest is good (the caller's size is wrong) and stays.
        """
        ...

    async def put_files(self, items: Sequence[UploadItem]) -> int:
        """Store each file as its digest; return the bytes written.

        Callers ask :meth:`missing` first (that is where dedup happens). A blob that is present
        already is kept as it is, never replaced.

        Raises:
            FileChangedError: a file's bytes no longer match its digest; nothing is stored for it.
        """
        ...

    async def put_bytes(self, data: bytes) -> str:
        """Store ``data`` unless a good copy (of its size) is present; return its digest."""
        ...

    async def get_bytes(self, digest: str) -> bytes:
        """Return a blob's bytes, verified. Raises NotFoundError or IntegrityError."""
        ...

    async def get_files(self, items: Sequence[tuple[str, str]]) -> int:
        """Write each (digest, dest path) atomically, verified; return the bytes written.

        Raises:
            NotFoundError: a blob is missing.
            IntegrityError: a blob's bytes do not match its digest.
        """
        ...

    async def flush(self) -> None:
        """Make every blob stored so far durable (called before the events that reference them).

        Raises:
            NotDurableError: the store could not make them durable; the caller must not
                append events that reference them.
        """
        ...


@runtime_checkable
class BlobPaths(Protocol):
    """An optional capability of a :class:`BlobStore` whose blobs are files on this machine (the
    local one). The server uses it to hand uploads over without a copy and to send blobs with
    ``sendfile``; for any other blob store it goes through the :class:`BlobStore` methods."""

    def path(self, digest: str) -> str:
        """The file that holds (or would hold) blob ``digest``."""
        ...

    def adopt(self, path: str, digest: str, size: int) -> None:
        """Store the verified file ``path`` (on the store's filesystem, written by nobody any
        more) as blob ``digest`` without copying it; a good blob already there is kept, never
        replaced. The caller removes ``path`` afterwards (blocking)."""
        ...


class StoredBlob(msgspec.Struct, frozen=True):
    """A blob as the store lists it: digest, size, and when it was written (seconds)."""

    digest: str
    size: int
    written: float


@runtime_checkable
class Swept(Protocol):
    """An optional capability of a :class:`Store` whose blobs a garbage collector may sweep
    (every store but a client's view of a server, which sweeps on its own side): its
    *collection epoch* counts the sweeps that removed blobs. A writer reads it before it
    checks which blobs are stored and passes it to :meth:`EventLog.append`."""

    async def epoch(self) -> int | None:
        """The store's collection epoch now (it waits while a collector sweeps); None: a
        store that is never swept (a server's that cannot be, or an older server)."""
        ...


@runtime_checkable
class Collectable(Swept, Protocol):
    """The capability a garbage collector needs of a :class:`Store` (see ``asyncart/_gc.py``)."""

    def sweeping(self) -> AbstractAsyncContextManager[None]:
        """Hold the store's collector lock for the block: :meth:`Swept.epoch` and every
        append that carries an epoch wait until it ends."""
        ...

    async def listed(self, shard: str) -> list[StoredBlob]:
        """The blobs whose digests start with ``shard`` (two hex digits)."""
        ...

    async def remove(self, digests: Sequence[str]) -> None:
        """Remove these blobs (inside :meth:`sweeping` only). The first call of a block moves
        the epoch on, durably, before it removes anything."""
        ...

    async def leftovers(self, before: float, remove: bool) -> tuple[int, int]:
        """Crash leftovers older than ``before`` (temporary files, empty streams, unfinished
        uploads): (how many, bytes), removed when ``remove``."""
        ...


@runtime_checkable
class Creatable(Protocol):
    """An optional capability of a :class:`Store` that must be made before it is written to
    (a local directory, a database schema); a server's store is made by the server."""

    async def create(self) -> None:
        """Make the store unless it is there, and check that it can be written."""
        ...

    async def require(self) -> None:
        """Check that the store is there and can be read.

        Raises:
            NotFoundError: nothing is there.
        """
        ...


class Store(Protocol):
    """A log and a blob store, opened together."""

    @property
    def log(self) -> EventLog: ...

    @property
    def blobs(self) -> BlobStore: ...

    @property
    def location(self) -> str:
        """Where the store is (a directory or URL), for messages."""
        ...

    def held(self) -> AbstractAsyncContextManager[object]:
        """Keep the store's connections open for the block (re-entrant). Outside any block,
        each request opens and closes its own, so nothing is left open; a store without
        connections does nothing."""
        ...

    async def aclose(self) -> None:
        """Release every connection now, even inside ``held`` (the next call opens anew)."""
        ...
