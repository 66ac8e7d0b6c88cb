"""Manifests: the materialized content of a version (path -> entry), in a compact layout.

A manifest holds its entries sorted by path and cut into pages of a few hundred. A page keeps
its entries as the very bytes the manifest digest hashes (msgpack ``[path, digest]`` pairs back
to back; ``[path, digest, ref]`` for a reference entry) and their sizes in an ``array``; no
Python object per entry is kept (a page with reference entries also keeps their URIs). So:

- the digest is one BLAKE3 pass over the pages, with nothing to encode;
- a replay (:class:`Overlay`) rebuilds only the pages its changes touch and shares the others
  with its base, so a small change on a large manifest copies no entries;
- a diff skips the pages two manifests share and compares the entries of the rest.

A page ends after an entry whose path hashes to a multiple of the page target (or at a hard
maximum), so two manifests with mostly the same content have mostly the same pages, whatever
their history. The hash is Python's own (salted per process): pages never leave the process.

:class:`Entry` objects are made on access, from the page that holds them (a few recently read
pages are kept decoded).
"""

from __future__ import annotations

import operator
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import (
    ItemsView as _ItemsView,
)
from collections.abc import (
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from collections.abc import (
    ValuesView as _ValuesView,
)
from dataclasses import dataclass
from itertools import accumulate, compress, count, islice
from typing import overload

import blake3
import msgspec

from .._errors import IntegrityError
from .events import Entry, decode_entries

_digest_encoder = msgspec.msgpack.Encoder()
_pairs_decoder = msgspec.msgpack.Decoder(list[tuple[str, str]])
_items_decoder = msgspec.msgpack.Decoder(list[list[str]])  # pairs, and triples with a ref


class _Row(msgspec.Struct, array_like=True, gc=False):
    """An entry as a snapshot holds it, decoded only to be laid out in pages (never tracked by
    the garbage collector: decoding many tracked objects triggers collections)."""

    path: str
    digest: str
    size: int
    ref: str | None = None


_rows_decoder = msgspec.msgpack.Decoder(list[_Row])
_path, _digest, _size, _ref = (
    operator.attrgetter(name) for name in ("path", "digest", "size", "ref")
)


def _columns(rows: Sequence[_Row | Entry]) -> tuple[list[str], list[str], list[int]]:
    """The paths, digests and sizes of ``rows``."""
    return list(map(_path, rows)), list(map(_digest, rows)), list(map(_size, rows))


def _refs(rows: Sequence[_Row | Entry]) -> list[str | None] | None:
    """The refs of ``rows``; None when none has one (the usual case: nothing kept)."""
    refs: list[str | None] = list(map(_ref, rows))
    return None if refs.count(None) == len(refs) else refs


_raw_decoder = msgspec.msgpack.Decoder(list[msgspec.Raw])

PAGE_TARGET = 512  # entries per page on average (a power of two: the cut is a mask)
PAGE_MAX = 4 * PAGE_TARGET  # a page never holds more
_CUT_MASK = PAGE_TARGET - 1
_DECODE_ROWS = 16_384  # snapshot entries decoded at a time: bounds the transient objects
_CACHED_PAGES = 16  # decoded pages kept per manifest, for lookups


def manifest_digest(entries: Iterable[Entry]) -> str:
    """BLAKE3 over the sorted (path, content digest) pairs, a reference entry's with its URI
    as a third item (the same content from elsewhere is another version); sizes and metadata
    do not count."""
    pairs = sorted(
        (e.path, e.digest) if e.ref is None else (e.path, e.digest, e.ref) for e in entries
    )
    return blake3.blake3(_digest_encoder.encode(pairs)).hexdigest()


def _array_header(count: int) -> bytes:
    """The msgpack header of an array of ``count`` items (the shortest form, as msgspec writes)."""
    if count < 16:
        return bytes([0x90 | count])
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def _sizes(sizes: Sequence[int]) -> Sequence[int]:
    """Sizes as a compact array; a tuple if one does not fit in int64 (a forged record)."""
    try:
        return array("q", sizes)
    except OverflowError:
        return tuple(sizes)


_HEADER_SIZE = {0xDC: 3, 0xDD: 5}  # of a msgpack array, by its first byte (else 1)


def _is_sorted(paths: Sequence[str]) -> bool:
    """Whether ``paths`` strictly increase (sorted, no duplicate)."""
    return all(map(operator.lt, paths, islice(paths, 1, None)))


@dataclass(frozen=True, slots=True, eq=False)
class _Page:
    """Consecutive entries of a manifest: ``body`` is their digest stream, ``sizes`` their sizes,
    ``refs`` their reference URIs (None where a page has no reference entry)."""

    first: str
    last: str
    body: bytes
    sizes: Sequence[int]
    refs: Sequence[str | None] | None = None

    def __len__(self) -> int:
        return len(self.sizes)

    def decode(self) -> tuple[Sequence[str], Sequence[str]]:
        """The paths and content digests of the page's entries."""
        data = _array_header(len(self.sizes)) + self.body
        if self.refs is None:
            paths, digests = zip(*_pairs_decoder.decode(data), strict=True)
            return paths, digests
        items = _items_decoder.decode(data)
        return [i[0] for i in items], [i[1] for i in items]

    def entries(
        self, paths: Sequence[str], digests: Sequence[str], lo: int, hi: int
    ) -> Iterator[Entry]:
        """The entries at positions ``lo`` to ``hi`` of the page (of its decoded columns)."""
        if self.refs is None:
            return map(Entry, paths[lo:hi], digests[lo:hi], self.sizes[lo:hi])
        return map(Entry, paths[lo:hi], digests[lo:hi], self.sizes[lo:hi], self.refs[lo:hi])


def _page(
    paths: Sequence[str],
    digests: Sequence[str],
    sizes: Sequence[int],
    refs: Sequence[str | None] | None = None,
) -> _Page:
    if refs is not None and refs.count(None) == len(refs):
        refs = None
    if refs is None:
        items: list[tuple[str, ...]] = list(zip(paths, digests, strict=True))
    else:
        items = [
            (p, d) if r is None else (p, d, r) for p, d, r in zip(paths, digests, refs, strict=True)
        ]
    encoded = _digest_encoder.encode(items)
    body = encoded[len(_array_header(len(paths))) :]
    return _Page(paths[0], paths[-1], body, _sizes(sizes), None if refs is None else tuple(refs))


class _PageWriter:
    """Cuts sorted entries, given in runs, into pages.

    Raises:
        ValueError: the paths do not strictly increase.
    """

    def __init__(self) -> None:
        self.pages: list[_Page] = []
        self._paths: list[str] = []
        self._digests: list[str] = []
        self._sizes: list[int] = []
        self._refs: list[str | None] | None = None  # made at the first reference entry

    def add(
        self,
        paths: Sequence[str],
        digests: Sequence[str],
        sizes: Sequence[int],
        refs: Sequence[str | None] | None = None,
    ) -> None:
        if not paths:
            return
        before = self._paths[-1] if self._paths else self.pages[-1].last if self.pages else None
        if (before is not None and before >= paths[0]) or not _is_sorted(paths):
            raise ValueError("entry paths are not sorted and unique")
        self._paths += paths
        self._digests += digests
        self._sizes += sizes
        if refs is not None and self._refs is None:
            self._refs = [None] * (len(self._paths) - len(paths))
        if self._refs is not None:
            self._refs += refs if refs is not None else [None] * len(paths)
        start = 0
        for end in self._cuts():
            self.pages.append(self._take(start, end))
            start = end
        del self._paths[:start], self._digests[:start], self._sizes[:start]
        if self._refs is not None:
            del self._refs[:start]

    def _cuts(self) -> list[int]:
        ends = map(operator.not_, map(_CUT_MASK.__and__, map(hash, self._paths)))
        natural = compress(count(1), ends)  # after each path whose hash has the low bits clear
        cuts, last = [], 0
        for cut in natural:
            while cut - last > PAGE_MAX:  # a long run without a natural cut
                last += PAGE_MAX
                cuts.append(last)
            cuts.append(cut)
            last = cut
        return cuts

    def _take(self, start: int, end: int) -> _Page:
        refs = None if self._refs is None else self._refs[start:end]
        return _page(self._paths[start:end], self._digests[start:end], self._sizes[start:end], refs)

    def finish(self) -> list[_Page]:
        """The pages, the last one holding whatever follows the last cut."""
        for start in range(0, len(self._paths), PAGE_MAX):
            self.pages.append(self._take(start, min(start + PAGE_MAX, len(self._paths))))
        self._paths, self._digests, self._sizes, self._refs = [], [], [], None
        return self.pages


def _pages_of(entries: Iterable[Entry]) -> list[_Page]:
    """The pages of ``entries`` (any order; of two with the same path, the last one counts)."""
    given = entries if isinstance(entries, list) else list(entries)
    try:  # usually sorted already (a root's events are): no sort, and short steps in C
        return _pages_of_sorted(given)
    except ValueError:
        pass
    ordered = sorted(given, key=_path)  # stable: of two with the same path, the last is last
    if not _is_sorted(list(map(_path, ordered))):  # the same path twice: keep the last one
        ordered = list({e.path: e for e in ordered}.values())
    return _pages_of_sorted(ordered)


def _pages_of_sorted(entries: list[Entry]) -> list[_Page]:
    """The pages of entries sorted by path; ValueError if they are not."""
    writer = _PageWriter()
    for start in range(0, len(entries), _DECODE_ROWS):
        chunk = entries[start : start + _DECODE_ROWS]
        writer.add(*_columns(chunk), _refs(chunk))
    return writer.finish()


class Manifest:
    """An immutable mapping of entry path -> :class:`Entry`, with its digest computed once.

    ``Manifest(mapping)`` copies the entries of any mapping of path -> entry; ``entries`` is a
    read-only view whose :class:`Entry` objects are made on access.
    """

    __slots__ = ("_cache", "_digest", "_firsts", "_len", "_pages", "_size", "_starts")

    def __init__(self, entries: Mapping[str, Entry] | None = None) -> None:
        if isinstance(entries, ManifestEntries):
            self._init(entries.manifest._pages)  # immutable: shared
        else:
            self._init(_pages_of((entries or {}).values()))

    def _init(self, pages: Sequence[_Page]) -> None:
        self._pages = tuple(pages)
        self._firsts = [page.first for page in self._pages]
        self._len = sum(map(len, self._pages))
        self._size: int | None = None
        self._digest: str | None = None
        self._cache: dict[int, tuple[Sequence[str], Sequence[str]]] = {}
        self._starts: list[int] | None = None  # the position of each page's first entry

    @classmethod
    def _of_pages(cls, pages: Sequence[_Page]) -> Manifest:
        manifest = cls.__new__(cls)
        manifest._init(pages)
        return manifest

    @classmethod
    def from_columns(
        cls, runs: Iterable[tuple[Sequence[str], Sequence[str], Sequence[int]]]
    ) -> Manifest:
        """The manifest of entries given as runs of (paths, digests, sizes) columns, in path
        order: no :class:`Entry` is made, and each run can go once it is laid out.

        Raises:
            ValueError: the paths do not strictly increase.
        """
        writer = _PageWriter()
        for paths, digests, sizes in runs:
            writer.add(paths, digests, sizes)
        return cls._of_pages(writer.finish())

    @classmethod
    def from_snapshot(cls, data: bytes, where: str = "snapshot") -> Manifest:
        """The manifest a snapshot holds; IntegrityError (naming ``where``) if it is damaged."""
        try:
            raws = _raw_decoder.decode(data)  # views: where each entry's bytes are
            writer = _PageWriter()
            at = _HEADER_SIZE.get(data[0], 1)  # the entries follow the list's header
            while raws:  # the views go as their pages come
                views = raws[:_DECODE_ROWS]
                del raws[:_DECODE_ROWS]
                end = at + sum(map(len, views))
                rows = _rows_decoder.decode(_array_header(len(views)) + data[at:end])
                writer.add(*_columns(rows), _refs(rows))
                at = end
            return cls._of_pages(writer.finish())
        except (msgspec.DecodeError, RecursionError) as e:
            raise IntegrityError(f"{where} does not decode: {e}") from None
        except ValueError:  # not sorted: not one this library wrote, but it decodes
            return cls({e.path: e for e in decode_entries(data, where)})

    def to_snapshot(self) -> bytes:
        """The snapshot bytes: a msgpack list of entries sorted by path (``[path, digest,
        size]``, and a reference entry's URI after them)."""
        parts = [_array_header(self._len)]
        for page in self._pages:
            paths, digests = page.decode()
            items: list[tuple[str, str, int] | tuple[str, str, int, str]]
            items = list(zip(paths, digests, page.sizes, strict=True))
            if page.refs is not None:
                items = [i if r is None else (*i, r) for i, r in zip(items, page.refs, strict=True)]
            rows = _digest_encoder.encode(items)
            parts.append(rows[len(_array_header(len(page))) :])
        return b"".join(parts)

    @property
    def entries(self) -> ManifestEntries:
        """A read-only mapping of path -> entry (digest, size), in path order."""
        return ManifestEntries(self)

    @property
    def digest(self) -> str:
        """BLAKE3 of the sorted (path, content digest) pairs (see :func:`manifest_digest`)."""
        if self._digest is None:
            hasher = blake3.blake3(_array_header(self._len))
            for page in self._pages:
                hasher.update(page.body)
            self._digest = hasher.hexdigest()
        return self._digest

    @property
    def size(self) -> int:
        """Total bytes of all entries."""
        if self._size is None:
            self._size = sum(sum(page.sizes) for page in self._pages)
        return self._size

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"<Manifest {len(self)} files {self.digest[:12]}>"

    # -- reading entries -------------------------------------------------------------------

    def _decoded(self, index: int) -> tuple[Sequence[str], Sequence[str]]:
        found = self._cache.get(index)
        if found is None:
            found = self._pages[index].decode()
            if len(self._cache) >= _CACHED_PAGES:
                self._cache.clear()  # not an iteration: another thread may read this manifest
            self._cache[index] = found
        return found

    def _find(self, path: str) -> tuple[int, int] | None:
        """(page, position in it) of ``path``, or None."""
        index = bisect_right(self._firsts, path) - 1
        if index < 0 or path > self._pages[index].last:
            return None
        paths, _ = self._decoded(index)
        at = bisect_left(paths, path)
        return (index, at) if at < len(paths) and paths[at] == path else None

    def get(self, path: str) -> Entry | None:
        """The entry at ``path``, or None."""
        found = self._find(path)
        if found is None:
            return None
        index, at = found
        paths, digests = self._decoded(index)
        page = self._pages[index]
        return Entry(paths[at], digests[at], page.sizes[at], page.refs[at] if page.refs else None)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and self._find(path) is not None

    def iter_entries(self, start: str = "", stop: str | None = None) -> Iterator[Entry]:
        """The entries with ``start <= path < stop`` (``stop`` None: to the end), in order."""
        first = max(bisect_right(self._firsts, start) - 1, 0)
        for index in range(first, len(self._pages)):
            page = self._pages[index]
            if stop is not None and page.first >= stop:
                return
            if page.last < start:
                continue
            paths, digests = self._decoded(index) if index in self._cache else page.decode()
            lo = bisect_left(paths, start) if start > page.first else 0
            hi = bisect_left(paths, stop) if stop is not None and stop <= page.last else len(paths)
            yield from page.entries(paths, digests, lo, hi)

    def entries_at(self, start: int, stop: int) -> list[Entry]:
        """The entries at positions ``start`` to ``stop`` (excluded) in path order."""
        if self._starts is None:
            self._starts = list(accumulate(map(len, self._pages), initial=0))
        starts, out = self._starts, list[Entry]()
        index = max(bisect_right(starts, start) - 1, 0)
        while index < len(self._pages) and starts[index] < stop:
            page, at = self._pages[index], starts[index]
            paths, digests = self._decoded(index) if index in self._cache else page.decode()
            lo, hi = max(start - at, 0), min(stop - at, len(page))
            out += page.entries(paths, digests, lo, hi)
            index += 1
        return out

    def iter_paths(self) -> Iterator[str]:
        """Every entry path, in order."""
        for index, page in enumerate(self._pages):
            paths, _ = self._decoded(index) if index in self._cache else page.decode()
            yield from paths

    def iter_digests(self) -> Iterator[str]:
        """Every entry's digest, in path order (a page at a time: no Entry is made)."""
        for index, page in enumerate(self._pages):
            _, digests = self._decoded(index) if index in self._cache else page.decode()
            yield from digests

    def iter_blob_digests(self) -> Iterator[str]:
        """The digest of every entry stored as a blob (reference entries left out), in path
        order: what the collector keeps and the audit checks."""
        for index, page in enumerate(self._pages):
            _, digests = self._decoded(index) if index in self._cache else page.decode()
            if page.refs is None:
                yield from digests
            else:
                yield from (d for d, r in zip(digests, page.refs, strict=True) if r is None)

    @property
    def has_refs(self) -> bool:
        """Whether some entry is a reference (``add_reference``)."""
        return any(page.refs is not None for page in self._pages)

    def under(self, prefix: str) -> Iterator[Entry]:
        """The entries whose path starts with ``prefix``, in order."""
        return self.iter_entries(prefix, _after_prefix(prefix))


def _after_prefix(prefix: str) -> str | None:
    """The least string above every string starting with ``prefix`` (None: no bound)."""
    stripped = prefix.rstrip(chr(0x10FFFF))
    if not stripped:
        return None
    return stripped[:-1] + chr(ord(stripped[-1]) + 1)


class ManifestEntries(Mapping[str, Entry]):
    """The read-only mapping path -> :class:`Entry` of a :class:`Manifest`, in path order."""

    __slots__ = ("manifest",)

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest

    def __getitem__(self, path: str) -> Entry:
        entry = self.manifest.get(path) if isinstance(path, str) else None
        if entry is None:
            raise KeyError(path)
        return entry

    def __contains__(self, path: object) -> bool:
        return path in self.manifest

    def __iter__(self) -> Iterator[str]:
        return self.manifest.iter_paths()

    def __len__(self) -> int:
        return len(self.manifest)

    def values(self) -> _ValuesView[Entry]:
        return _Values(self)

    def items(self) -> _ItemsView[str, Entry]:
        return _Items(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ManifestEntries):
            return len(self) == len(other) and all(
                map(operator.eq, self.manifest.iter_entries(), other.manifest.iter_entries())
            )
        return super().__eq__(other)

    def __repr__(self) -> str:
        return f"<ManifestEntries {len(self)} files>"


class _Values(_ValuesView[Entry]):
    _mapping: ManifestEntries

    def __iter__(self) -> Iterator[Entry]:
        return self._mapping.manifest.iter_entries()


class _Items(_ItemsView[str, Entry]):
    _mapping: ManifestEntries

    def __iter__(self) -> Iterator[tuple[str, Entry]]:
        return ((e.path, e) for e in self._mapping.manifest.iter_entries())


EMPTY = Manifest()
"""The manifest with no entries."""


class EntryList(Sequence[Entry]):
    """The entries of a :class:`Manifest` as a read-only sequence in path order, each
    :class:`Entry` made on access."""

    __slots__ = ("_manifest",)

    def __init__(self, manifest: Manifest) -> None:
        self._manifest = manifest

    def __len__(self) -> int:
        return len(self._manifest)

    @overload
    def __getitem__(self, index: int) -> Entry: ...
    @overload
    def __getitem__(self, index: slice) -> list[Entry]: ...
    def __getitem__(self, index: int | slice) -> Entry | list[Entry]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return self._manifest.entries_at(start, stop)
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        at = index % len(self)
        return self._manifest.entries_at(at, at + 1)[0]

    def __iter__(self) -> Iterator[Entry]:
        return self._manifest.iter_entries()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(self) == len(other) and all(map(operator.eq, self, other))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<EntryList {len(self)} files>"


class Overlay(MutableMapping[str, Entry]):
    """A manifest being changed: a base :class:`Manifest` and the changes made over it.

    The base is never copied: a few changes on a large base cost what they change, and
    :meth:`manifest` rebuilds only the pages they touch.
    """

    def __init__(self, base: Manifest | None = None) -> None:
        self.base = base if base is not None else EMPTY
        self.added: dict[str, Entry] = {}  # path -> entry, over the base
        self.removed: set[str] = set()  # base paths removed (and not added again)
        self._len = len(self.base)
        self._dirs: dict[str, int] | None = None  # directories of ``added``, once asked
        self._sorted = True  # whether the bulk may still go to pages as it comes
        # Entries added to an empty overlay, not yet in ``added``: laid out into pages as they
        # come while their paths keep increasing (a replayed root's do), so a million of them
        # are never held at once (a list of a million objects makes every garbage collection
        # visit them all, holding the GIL); kept in ``_bulk`` to be sorted once otherwise.
        self._writer: _PageWriter | None = None
        self._bulk: list[Entry] = []

    @property
    def in_bulk(self) -> bool:
        """Whether entries were only added so far, to an empty base (none looked up yet)."""
        return bool(self._bulk) or self._writer is not None

    def _bulk_entries(self) -> list[Entry]:
        """Take every entry added in bulk, in the order added (the pages' ones first)."""
        writer, bulk, self._writer, self._bulk = self._writer, self._bulk, None, []
        if writer is None:
            return bulk
        return [*Manifest._of_pages(writer.finish()).iter_entries(), *bulk]

    def _lay_out(self) -> None:
        """Move ``_bulk`` into the page writer, unless its paths do not continue the pages'."""
        if self._writer is None:
            self._writer = _PageWriter()
        try:
            self._writer.add(*_columns(self._bulk), _refs(self._bulk))
        except ValueError:  # out of order, or a path again: sort them all once, at the end
            self._bulk = self._bulk_entries()
            self._sorted = False
        else:
            self._bulk = []

    def _settle(self) -> None:
        """Move the entries added in bulk into ``added`` (needed by any lookup)."""
        if self.in_bulk:
            bulk = self._bulk_entries()
            self.added.update(zip(map(_path, bulk), bulk, strict=True))
            self._len = len(self.added)

    def __getitem__(self, path: str) -> Entry:
        self._settle()
        entry = self.added.get(path)
        if entry is None and path not in self.removed:
            entry = self.base.get(path)
        if entry is None:
            raise KeyError(path)
        return entry

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, str):
            return False
        self._settle()
        return path in self.added or (path not in self.removed and path in self.base)

    def __setitem__(self, path: str, entry: Entry) -> None:
        if path not in self:  # (settles the bulk)
            self._len += 1
        if path not in self.added:
            self._count_dirs(path, 1)
        self.added[path] = entry
        self.removed.discard(path)

    def __delitem__(self, path: str) -> None:
        if path not in self:
            raise KeyError(path)
        self._len -= 1
        if self.added.pop(path, None) is not None:
            self._count_dirs(path, -1)
        if path in self.base:
            self.removed.add(path)

    def __len__(self) -> int:
        self._settle()
        return self._len

    def __iter__(self) -> Iterator[str]:
        self._settle()
        for entry in self.base.iter_entries():
            if entry.path not in self.removed and entry.path not in self.added:
                yield entry.path
        yield from self.added

    def add_entries(self, entries: Sequence[Entry]) -> None:
        """Set each of ``entries`` at its path (as ``self[e.path] = e`` for each, faster)."""
        if len(self.base) or self.added or self.removed or self._dirs is not None:
            for entry in entries:
                self[entry.path] = entry
        else:  # nothing to look up: lay them out as they come, or keep them to sort once
            self._bulk += entries
            if self._sorted and len(self._bulk) >= _DECODE_ROWS:
                self._lay_out()

    def matching(self, path: str) -> list[str]:
        """What ``remove(path)`` removes: ``path`` itself, else everything under ``path/``."""
        self._settle()
        if not path.endswith("/") and path in self:
            return [path]
        prefix = path if path.endswith("/") else path + "/"
        kept = [e.path for e in self.base.under(prefix) if e.path not in self.removed]
        return sorted({*kept, *(key for key in self.added if key.startswith(prefix))})

    @property
    def dirs_known(self) -> bool:
        """Whether the directories of the added entries are counted already."""
        return self._dirs is not None

    def is_dir(self, path: str) -> bool:
        """Whether some entry lies under ``path/``."""
        self._settle()
        if self._dirs is None:
            self._dirs = {}
            for key in self.added:
                self._count_dirs(key, 1)
        if path in self._dirs:
            return True
        return any(e.path not in self.removed for e in self.base.under(path + "/"))

    def _count_dirs(self, path: str, step: int) -> None:
        dirs = self._dirs
        if dirs is None:
            return
        cut = path.find("/")
        while cut != -1:
            folder = path[:cut]
            if (count := dirs.get(folder, 0) + step) > 0:
                dirs[folder] = count
            else:
                dirs.pop(folder, None)
            cut = path.find("/", cut + 1)

    def manifest(self) -> Manifest:
        """The manifest the changes make of the base."""
        if self.in_bulk:  # an empty base and only additions
            if self._sorted and self._bulk:
                self._lay_out()
            if self._sorted:
                assert self._writer is not None  # (a copy: more entries may follow)
                return Manifest._of_pages(list(self._writer.finish()))
            return Manifest._of_pages(_pages_of(self._bulk))
        if not self.added and not self.removed:
            return self.base
        base = self.base
        if not len(base):
            return Manifest._of_pages(_pages_of(self.added.values()))
        touched: dict[int, list[str]] = {}
        for path in [*self.added, *self.removed]:
            touched.setdefault(max(bisect_right(base._firsts, path) - 1, 0), []).append(path)
        pages: list[_Page] = []
        done = 0
        for index in sorted(touched):
            pages += base._pages[done:index]
            pages += self._rebuilt(index, touched[index])
            done = index + 1
        pages += base._pages[done:]
        return Manifest._of_pages(pages)

    def _rebuilt(self, index: int, changed: list[str]) -> list[_Page]:
        """The pages that replace base page ``index`` (if any), given the paths changed in it."""
        rows: dict[str, tuple[str, int, str | None]] = {}
        if index < len(self.base._pages):
            page = self.base._pages[index]
            paths, digests = page.decode()
            refs = page.refs if page.refs is not None else [None] * len(page)
            rows = dict(zip(paths, zip(digests, page.sizes, refs, strict=True), strict=True))
        for path in changed:
            entry = self.added.get(path)
            if entry is None:
                rows.pop(path, None)
            else:
                rows[path] = (entry.digest, entry.size, entry.ref)
        writer = _PageWriter()
        ordered = sorted(rows)
        for start in range(0, len(ordered), _DECODE_ROWS):
            chunk = ordered[start : start + _DECODE_ROWS]
            refs_of: list[str | None] = [rows[p][2] for p in chunk]
            writer.add(
                chunk,
                [rows[p][0] for p in chunk],
                [rows[p][1] for p in chunk],
                None if refs_of.count(None) == len(refs_of) else refs_of,
            )
        return writer.finish()


def pages_apart(old: Manifest, new: Manifest) -> tuple[dict[str, str], dict[str, str]]:
    """path -> content digest (a reference entry's followed by its URI) of the entries of
    ``old`` and of ``new`` outside the pages they share: pages with the same bytes hold the same
    entries, and a path is in one page of each manifest, so an entry outside the shared pages
    differs or is on one side only."""
    same = {id(page) for page in old._pages} & {id(page) for page in new._pages}  # a replay's
    rest_old = [page for page in old._pages if id(page) not in same]
    rest_new = [page for page in new._pages if id(page) not in same]
    shared = {page.body for page in rest_old} & {page.body for page in rest_new}
    return _apart(rest_old, shared), _apart(rest_new, shared)


def _apart(pages: list[_Page], shared: set[bytes]) -> dict[str, str]:
    out: dict[str, str] = {}
    for page in pages:
        if page.body not in shared:
            paths, digests = page.decode()
            if page.refs is not None:  # a reference moved elsewhere is a change too
                refs = zip(digests, page.refs, strict=True)
                digests = [d if r is None else f"{d} {r}" for d, r in refs]
            out.update(zip(paths, digests, strict=True))
    return out
