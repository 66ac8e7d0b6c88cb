"""The transfer pool: hashing local files, and moving blobs to and from a store.

Work is cut into batches (many small files, or one large file) that flow through a bounded
memory stream to ``concurrency`` workers: the stream's bound is the backpressure, and every
blocking call (open, read, hash, write) runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import errno
import os
import stat
from array import array
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread
import blake3

from ._backends.base import BlobStore, UploadItem
from ._backends.fileio import SMALL, kind, open_regular, read_small, why_unreadable
from ._domain.events import Entry
from ._domain.manifest import Manifest
from ._errors import InvalidInputError, NotFoundError
from ._threads import HEAVY, gc_paused, maybe_thread, responsive

DEFAULT_CONCURRENCY = min(4, max(2, os.cpu_count() or 1))
"""Transfer workers: writes overlap well up to about 4, but more threads than cores only
contend (on 2 cores, 2 workers stored 20,000 small files 15% faster than 4); at least 2, so
that a server store's requests still overlap on one core."""
HASH_CONCURRENCY = 1  # hashing small files is GIL-bound: 20k files hash in 0.28 s on one
# thread, 0.5-0.6 s on four (GIL hand-offs around every short syscall); BLAKE3 itself uses every
# core for large files
ASK_FILES = 50_000  # an upload asks what the store lacks, and sends it, this many files at a time
BATCH_FILES = 256  # small files travel in batches of up to this many ...
BATCH_BYTES = 16 << 20  # ... or this many bytes, so per-file overhead stays small
_CHUNK = 8 << 20

T = TypeVar("T")
R = TypeVar("R")
B = TypeVar("B")


@dataclass(frozen=True)
class Progress:
    """How far a transfer is; passed to the ``progress`` callback after every batch.

    An upload counts only the blobs the store lacks, and ``bytes_done`` is what the store
    reports it wrote; so the last ``Progress`` of an upload says how many bytes the store
    actually stored (content it already had was deduplicated and is not counted).
    """

    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int


ProgressCallback = Callable[[Progress], None]


def batches(items: Iterable[T], size_of: Callable[[T], int]) -> list[list[T]]:
    """Group items into batches of at most BATCH_FILES files and about BATCH_BYTES bytes."""
    out: list[list[T]] = []
    current: list[T] = []
    current_bytes = 0
    for item in items:
        size = size_of(item)
        if current and (len(current) >= BATCH_FILES or current_bytes + size > BATCH_BYTES):
            out.append(current)
            current, current_bytes = [], 0
        current.append(item)
        current_bytes += size
    if current:
        out.append(current)
    return out


async def run_pool(
    work: Sequence[B],
    handle: Callable[[B], Awaitable[R]],
    concurrency: int,
    done: Callable[[B, R], None] | None = None,
) -> list[R]:
    """Run ``handle`` over every batch with ``concurrency`` workers and bounded buffering."""
    if concurrency < 1:
        raise InvalidInputError(f"concurrency must be >= 1, got {concurrency}")
    results: list[R] = []
    send, receive = anyio.create_memory_object_stream[B](concurrency)

    async def worker(inbox: anyio.abc.ObjectReceiveStream[B]) -> None:
        async with inbox:
            async for batch in inbox:
                result = await handle(batch)
                results.append(result)
                if done is not None:
                    done(batch, result)

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(min(concurrency, max(len(work), 1))):
                tg.start_soon(worker, receive.clone())
            receive.close()
            async with send:
                for batch in work:
                    await send.send(batch)
    except BaseExceptionGroup as group:
        raise _first_error(group) from None  # callers expect our errors, not a group of them
    return results


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real error in a task group's (nested) group; cancellations come last."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        error = stack.pop(0)
        if isinstance(error, BaseExceptionGroup):
            stack[:0] = error.exceptions
        else:
            leaves.append(error)
    cancelled = anyio.get_cancelled_exc_class()
    return next((e for e in leaves if not isinstance(e, cancelled)), leaves[0])


class _Tracker:
    """Counts finished files and bytes, and tells the progress callback."""

    def __init__(self, files: int, total: int, callback: ProgressCallback | None) -> None:
        self.files_total, self.bytes_total, self.callback = files, total, callback
        self.files = self.bytes = 0
        self.advance(0, 0)  # the totals are known now, even when there is nothing to move

    def advance(self, files: int, nbytes: int) -> None:
        self.files += files
        self.bytes += nbytes
        if self.callback is not None:
            self.callback(Progress(self.files, self.files_total, self.bytes, self.bytes_total))


async def upload(
    blobs: BlobStore,
    items: Sequence[UploadItem],
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: ProgressCallback | None = None,
) -> int:
    """Store each file as its digest, skipping blobs already present; return bytes written.

    The store is asked what it lacks, then sent it, a slice of ``ASK_FILES`` items at a time:
    what a commit holds beside its items stays bounded, however many files it has.
    """
    heavy = len(items) > HEAVY
    # What the store lacks, each digest once, as its 32 bytes. A dict, not a set: a dict of
    # bytes keys is not tracked by the garbage collector, and a tracked container of a million
    # items makes every full collection (in whichever thread) hold the GIL for tens of ms.
    missing: dict[bytes, None] = {}
    files = total = 0
    for start in range(0, len(items), ASK_FILES):
        sizes = await maybe_thread(heavy, _sizes, items, start)
        lacking = await blobs.missing(sizes)
        found = await maybe_thread(heavy, _note_missing, lacking, sizes, missing)
        files, total = files + found[0], total + found[1]
        held: list[object] = [sizes, lacking]
        del sizes, lacking
        await maybe_thread(heavy, held.clear)  # tens of thousands of strings: freed off the loop
    tracker = _Tracker(files, total, progress)
    written = 0
    for start in range(0, len(items), ASK_FILES):
        work = await maybe_thread(heavy, _plan, items, start, missing)
        done = await run_pool(
            work,
            blobs.put_files,
            concurrency,
            lambda batch, nbytes: tracker.advance(len(batch), nbytes),  # what the store wrote
        )
        written += sum(done)
        await maybe_thread(heavy, work.clear)  # as above
    return written


def _sizes(items: Sequence[UploadItem], start: int) -> dict[str, int]:
    """Each digest's size (what ``missing`` checks), of the slice of ``items`` at ``start``
    (made here, off the loop: ``items`` may make its slices when asked)."""
    return {i.digest: i.size for i in items[start : start + ASK_FILES]}


def _note_missing(
    lacking: set[str], sizes: dict[str, int], missing: dict[bytes, None]
) -> tuple[int, int]:
    """Add to ``missing`` the digests ``lacking`` that are not in it yet; return how many, and
    their bytes."""
    files = nbytes = 0
    for digest in lacking:
        key = bytes.fromhex(digest)
        if key not in missing:
            missing[key] = None
            files, nbytes = files + 1, nbytes + sizes[digest]
    return files, nbytes


def _plan(
    items: Sequence[UploadItem], start: int, missing: dict[bytes, None]
) -> list[list[UploadItem]]:
    """The batches of the slice of ``items`` at ``start`` whose blobs are ``missing``, taking
    each digest out of ``missing`` as it is planned (a blob of many files is sent once)."""
    todo = []
    for item in items[start : start + ASK_FILES]:
        key = bytes.fromhex(item.digest)
        if key in missing:
            del missing[key]
            todo.append(item)
    return batches(todo, _item_size)


async def hash_files(
    paths: Sequence[tuple[str, str]],
    concurrency: int = HASH_CONCURRENCY,
    progress: ProgressCallback | None = None,
) -> list[Entry]:
    """Hash local files given as (entry path, local path) pairs; return entries in input order."""
    work, total = await anyio.to_thread.run_sync(_plan_hashing, paths)
    tracker = _Tracker(len(paths), total, progress)
    results = await run_pool(
        work,
        lambda batch: anyio.to_thread.run_sync(_hash_batch, batch),
        concurrency,
        lambda batch, hashed: tracker.advance(len(hashed), sum(e.size for _, e in hashed)),
    )
    return await maybe_thread(len(paths) > HEAVY, _in_input_order, results)


def _item_size(item: UploadItem) -> int:
    return item.size


def _plan_hashing(
    paths: Sequence[tuple[str, str]],
) -> tuple[list[list[tuple[int, tuple[str, str, int]]]], int]:
    """Number the files (batches finish in any order), size them, and cut them into batches;
    also return their total size."""
    sized = [(name, src, _size(src)) for name, src in paths]
    return batches(enumerate(sized), lambda numbered: numbered[1][2]), sum(s for *_, s in sized)


def _in_input_order(results: list[list[tuple[int, Entry]]]) -> list[Entry]:
    ordered = sorted((pair for result in results for pair in result), key=lambda pair: pair[0])
    return [entry for _, entry in ordered]


def _size(path: str) -> int:
    """The size of a file to add, after checking that it is a regular file (or a link to one):
    a FIFO or device would block the read, or never end."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise _unreadable(path, e) from None
    if not stat.S_ISREG(st.st_mode):
        hint = "; use add_dir" if stat.S_ISDIR(st.st_mode) else ""
        raise InvalidInputError(
            f"cannot add {path}: it is {kind(st.st_mode)}, not a regular file{hint}"
        )
    return st.st_size


def _unreadable(path: str, error: OSError) -> NotFoundError | InvalidInputError:
    """The error for a local file that cannot be read, naming it and why."""
    if isinstance(error, FileNotFoundError | NotADirectoryError):
        return NotFoundError(f"no such file: {path} ({why_unreadable(error)})")
    return InvalidInputError(f"cannot read {path}: {why_unreadable(error)}")


def _hash_batch(batch: list[tuple[int, tuple[str, str, int]]]) -> list[tuple[int, Entry]]:
    out = []
    for index, (name, source, hint) in batch:
        digest, size = hash_file(source, hint)
        out.append((index, Entry(name, digest, size)))
    return out


def hash_file(path: str, size_hint: int = 0) -> tuple[str, int]:
    """BLAKE3 digest and size of a local file, read in bounded chunks (blocking).

    Raises:
        NotFoundError: there is no file at ``path``.
        InvalidInputError: it is not a regular file (never read: a FIFO would block), or it
            cannot be read.
    """
    digest, size = _hash_raw(path, size_hint)
    return digest.hex(), size


def _hash_raw(path: str, size_hint: int) -> tuple[bytes, int]:
    """As :func:`hash_file`, with the digest as its 32 bytes."""
    try:
        if size_hint <= SMALL:  # read whole, with a limit near the size: a 1 MiB buffer per
            limit = min(max(size_hint, 64 << 10), SMALL) + 1  # 4 KiB file cost more than a read
            data = read_small(path, limit)
            if len(data) < limit:  # all of it (a file that grew takes the path below)
                return blake3.blake3(data).digest(), len(data)
        with open(open_regular(path), "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            hasher = blake3.blake3(max_threads=blake3.blake3.AUTO if size > _CHUNK else 1)
            buf = bytearray(min(max(size, 64 << 10) + 1, _CHUNK))
            view = memoryview(buf)
            total = 0
            while n := f.readinto(buf):
                hasher.update(view[:n])
                total += n
            return hasher.digest(), total
    except OSError as e:
        raise _unreadable(path, e) from None


async def hash_tree(
    pairs: Sequence[tuple[str, str]],
    progress: ProgressCallback | None = None,
) -> Manifest:
    """Hash local files given as (entry path, local path) pairs sorted by entry path, with no
    path twice; return their manifest.

    A file costs what its manifest entry costs: digests are kept as 32 bytes in one buffer and
    sizes in an array until the pages are laid out, and no :class:`Entry` is made.
    """
    sizes, work, total, digests = await anyio.to_thread.run_sync(_plan_tree, pairs)
    tracker = _Tracker(len(pairs), total, progress)

    def hash_range(span: range) -> int:
        nbytes = 0
        for i in span:
            digest, size = _hash_raw(pairs[i][1], sizes[i])
            digests[32 * i : 32 * i + 32] = digest
            sizes[i] = size
            nbytes += size
        return nbytes

    await run_pool(
        work,
        lambda span: anyio.to_thread.run_sync(hash_range, span),
        HASH_CONCURRENCY,
        lambda span, nbytes: tracker.advance(len(span), nbytes),
    )
    return await anyio.to_thread.run_sync(_tree_manifest, pairs, digests, sizes)


def _plan_tree(
    pairs: Sequence[tuple[str, str]],
) -> tuple[array[int], list[range], int, bytearray]:
    """The size of each file (checking that it is a regular file), the batches to hash (as
    ranges of positions), the total size, and room for the digests (32 bytes each: zeroed
    here, off the loop)."""
    sizes = array("q", (_size(local) for _, local in pairs))
    spans, start, nbytes = [], 0, 0
    for i, size in enumerate(sizes):  # as ``batches`` cuts them
        if i > start and (i - start >= BATCH_FILES or nbytes + size > BATCH_BYTES):
            spans.append(range(start, i))
            start, nbytes = i, 0
        nbytes += size
    if start < len(sizes):
        spans.append(range(start, len(sizes)))
    return sizes, spans, sum(sizes), bytearray(32 * len(pairs))


_RUN = 16_384  # entries laid out at a time: bounds the transient strings


def _tree_manifest(
    pairs: Sequence[tuple[str, str]], digests: bytearray, sizes: array[int]
) -> Manifest:
    def runs() -> Iterator[tuple[list[str], list[str], array[int]]]:
        for start in range(0, len(pairs), _RUN):
            stop = min(start + _RUN, len(pairs))
            hexes = digests[32 * start : 32 * stop].hex()
            yield (
                [path for path, _ in pairs[start:stop]],
                [hexes[i : i + 64] for i in range(0, len(hexes), 64)],
                sizes[start:stop],
            )

    with gc_paused():
        return Manifest.from_columns(runs())


async def download(
    blobs: BlobStore,
    manifest: Manifest | Sequence[Entry],
    root: Path,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: ProgressCallback | None = None,
) -> int:
    """Write every entry of ``manifest`` (or of a list of entries) under ``root``, verified;
    never writes outside ``root``. Return the bytes fetched from the store.

    A file already at an entry's path with the entry's size and digest is left in place and
    nothing is fetched for it (its size is compared first: a file of another size is never
    read), so downloading an unchanged version again reads local files only.
    """
    async with responsive():  # planning, writing and hashing run in threads
        return await _download(blobs, manifest, root, concurrency, progress)


async def _download(
    blobs: BlobStore,
    manifest: Manifest | Sequence[Entry],
    root: Path,
    concurrency: int,
    progress: ProgressCallback | None,
) -> int:
    work, sizes, files, total = await anyio.to_thread.run_sync(_plan_download, root, manifest)
    tracker = _Tracker(files, total, progress)
    fetched = 0

    async def fetch(batch: list[tuple[str, str]]) -> int:
        nonlocal fetched
        stale = await anyio.to_thread.run_sync(_stale, batch, sizes)
        try:
            fetched += await blobs.get_files(stale) if stale else 0
        except OSError as e:
            if not _under(e, stale):
                raise  # not about the files written here (a network error is an OSError)
            raise InvalidInputError(
                f"cannot download into {root}: writing {e.filename} failed: "
                f"{e.strerror or e}; {_DOWNLOAD_ADVICE.get(e.errno or 0, 'choose another root')}"
            ) from None
        return sum(sizes[digest] for digest, _ in batch)  # in place now, fetched or kept

    await run_pool(
        work, fetch, concurrency, lambda batch, nbytes: tracker.advance(len(batch), nbytes)
    )
    return fetched


def _stale(batch: list[tuple[str, str]], sizes: dict[str, int]) -> list[tuple[str, str]]:
    """The (digest, destination) pairs of ``batch`` whose destination does not hold the blob
    already: missing, not a regular file, of another size, or of other bytes (blocking)."""
    out = []
    for digest, dest in batch:
        try:
            st = os.stat(dest, follow_symlinks=False)
            same = stat.S_ISREG(st.st_mode) and st.st_size == sizes[digest]
            same = same and hash_file(dest, st.st_size) == (digest, sizes[digest])
        except (OSError, NotFoundError, InvalidInputError):  # gone or unreadable: fetch it
            same = False
        if not same:
            out.append((digest, dest))
    return out


_DOWNLOAD_ADVICE = {
    **dict.fromkeys((errno.EACCES, errno.EPERM, errno.EROFS), "choose a root this user can write"),
    **dict.fromkeys(
        (errno.ENOSPC, errno.EDQUOT), "free some space or choose a root on another disk"
    ),
}


def _under(error: OSError, batch: list[tuple[str, str]]) -> bool:
    """Whether ``error`` is about a file in the directory of one of ``batch``'s destinations
    (a destination, or its temporary file)."""
    where = error.filename
    return isinstance(where, str) and os.path.dirname(where) in {
        os.path.dirname(dest) for _, dest in batch
    }


def _plan_download(
    root: Path, manifest: Manifest | Sequence[Entry]
) -> tuple[list[list[tuple[str, str]]], dict[str, int], int, int]:
    """Batches of (digest, destination) pairs, with every destination directory made safely;
    each digest's size; and how many files and bytes there are."""
    entries = list(manifest.entries.values() if isinstance(manifest, Manifest) else manifest)
    targets = _prepare_dirs(root, entries)
    sizes = {entry.digest: entry.size for entry in entries}
    work = batches(
        [(e.digest, dest) for e, dest in zip(entries, targets, strict=True)],
        lambda pair: sizes[pair[0]],
    )
    return work, sizes, len(entries), sum(e.size for e in entries)


def _prepare_dirs(root: Path, entries: list[Entry]) -> list[str]:
    """Create the directories the entries need; refuse any that resolves outside ``root``.

    Each directory's whole path is resolved before anything is created: a symbolic link inside
    the root must not lead ``mkdir`` to make directories elsewhere before it is refused.
    """
    _make_dir(root, root, "")
    real_root = root.resolve()
    checked: dict[str, Path] = {}
    targets = []
    for entry in entries:
        parent, _, name = entry.path.rpartition("/")
        if parent not in checked:
            where = (real_root / parent) if parent else real_root
            _check_inside(where, real_root, root, entry)
            _make_dir(where, root, entry.path)
            _check_inside(where, real_root, root, entry)  # again: a link swapped in meanwhile
            checked[parent] = where
        target = checked[parent] / name
        if target.is_symlink() or target.is_dir():
            raise InvalidInputError(f"refusing to overwrite {target}: not a regular file")
        if len(os.fsencode(target)) >= _PATH_MAX:
            raise InvalidInputError(
                f"cannot download {entry.path!r} under {root}: the whole path would be over "
                f"{_PATH_MAX} bytes, more than the system allows; choose a shorter root"
            )
        targets.append(str(target))
    return targets


_PATH_MAX = 4096


def _check_inside(where: Path, real_root: Path, root: Path, entry: Entry) -> None:
    if not where.resolve().is_relative_to(real_root):
        raise InvalidInputError(
            f"refusing to download {entry.path!r}: {where} leads outside {root} "
            "(through a symbolic link)"
        )


def _make_dir(where: Path, root: Path, path: str) -> None:
    """``mkdir -p``, with a clear error when a file (or anything else) is in the way."""
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        what = f"{path!r} under {root}" if path else f"into {root}"
        blocked = isinstance(e, FileExistsError | NotADirectoryError)
        why = f"{e.filename or where} is not a directory" if blocked else e.strerror or str(e)
        hint = "; choose another root" if not path else ""
        raise InvalidInputError(f"cannot download {what}: {why}{hint}") from None
