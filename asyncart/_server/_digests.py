"""A set of raw 32-byte blob digests, compact: what the server keeps for blob scope.

The server keeps, per project, the digests its logs reference (``_scope.py``) and, per token,
those it uploaded (``_seen.py``): a million each after a commit of a million files. A ``dict``
or ``set`` of ``bytes`` costs about 105 bytes a digest (tracemalloc: the object, 65 bytes, and
its slot); here digests are kept back to back in ``bytearray`` buckets, one per value of their
first two bytes, so a million cost about 45 bytes each (a bucket holds ~15 and is searched
with ``bytearray.find``; a small set costs more a digest, at most 65,536 buckets in all).
Nothing in it is tracked by the garbage collector.

Work on many digests is done a slice at a time, letting the event loop run in between: a
slice holds the loop for a few milliseconds. Each slice looks up and adds without awaiting,
so two tasks adding the same digest at once keep it once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Iterable, Iterator
from itertools import islice

import anyio.lowlevel

SLICE = 8192
"""Digests looked up or added between two turns of the event loop."""
_WIDTH = 32


class DigestSet:
    """Raw 32-byte digests (see the module docstring)."""

    __slots__ = ("_buckets", "_count")

    def __init__(self) -> None:
        self._buckets: dict[bytes, bytearray] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, digest: object) -> bool:
        if not isinstance(digest, bytes):
            return False
        return bool(self._split([digest])[0])

    def __iter__(self) -> Iterator[bytes]:
        for bucket in list(self._buckets.values()):
            data = bytes(bucket)
            yield from (data[i : i + _WIDTH] for i in range(0, len(data), _WIDTH))

    def add_now(self, digests: Iterable[bytes]) -> None:
        """Add ``digests`` at once (see :meth:`add` for many).

        Raises:
            ValueError: a digest is not 32 bytes.
        """
        buckets, added = self._buckets, 0
        for digest in digests:  # (the lookup inlined: this loop is the cost of an upload)
            if len(digest) != _WIDTH:
                raise ValueError(f"a digest of {len(digest)} bytes, not {_WIDTH}")
            bucket = buckets.get(digest[:2])
            if bucket is None:
                buckets[digest[:2]] = bytearray(digest)
            else:
                at = bucket.find(digest)
                if at != -1 and (not at % _WIDTH or _holds(bucket, digest, at)):
                    continue
                bucket += digest
            added += 1
        self._count += added

    async def add(self, digests: Iterable[bytes]) -> None:
        """Add ``digests``, a slice at a time."""
        async for part in _slices(digests):
            self.add_now(part)

    async def missing(self, wanted: Collection[bytes]) -> set[bytes]:
        """Those of ``wanted`` not in the set."""
        out: set[bytes] = set()
        async for part in _slices(wanted):
            out.update(self._split(part)[1])
        return out

    async def held(self, wanted: Collection[bytes]) -> set[bytes]:
        """Those of ``wanted`` in the set."""
        out: set[bytes] = set()
        async for part in _slices(wanted):
            out.update(self._split(part)[0])
        return out

    def _split(self, digests: list[bytes]) -> tuple[list[bytes], list[bytes]]:
        """``digests`` held, and not held."""
        get, held, absent = self._buckets.get, [], []
        for digest in digests:
            bucket = get(digest[:2])
            if bucket is not None and len(digest) == _WIDTH:
                at = bucket.find(digest)
                if at != -1 and (not at % _WIDTH or _holds(bucket, digest, at)):
                    held.append(digest)
                    continue
            absent.append(digest)
        return held, absent


def _holds(bucket: bytearray, digest: bytes, at: int = 0) -> bool:
    """Whether ``digest`` is one of the 32-byte items of ``bucket``, looking from ``at`` (a
    match across two items does not count)."""
    at = bucket.find(digest, at)
    while at > 0 and at % _WIDTH:
        at = bucket.find(digest, at + 1)
    return at != -1


async def _slices(digests: Iterable[bytes]) -> AsyncIterator[list[bytes]]:
    """``digests`` a ``SLICE`` at a time, with a turn of the event loop before each one after
    the first."""
    it = iter(digests)
    first = True
    while part := list(islice(it, SLICE)):
        if not first:
            await anyio.lowlevel.checkpoint()
        first = False
        yield part
