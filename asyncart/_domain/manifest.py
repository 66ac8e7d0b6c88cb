"""Manifests: the materialized content of a version (path -> entry)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

import blake3
import msgspec

from .events import Entry, decode_entries, encode_entries

_digest_encoder = msgspec.msgpack.Encoder()


def manifest_digest(entries: Iterable[Entry]) -> str:
    """BLAKE3 over the sorted (path, content digest) pairs; sizes and metadata do not count."""
    pairs = sorted((e.path, e.digest) for e in entries)
    return blake3.blake3(_digest_encoder.encode(pairs)).hexdigest()


class Manifest:
    """An immutable mapping of entry path -> :class:`Entry`, with its digest computed once."""

    __slots__ = ("_digest", "_entries")

    def __init__(self, entries: Mapping[str, Entry] | None = None) -> None:
        self._entries = dict(entries or {})
        self._digest: str | None = None

    @classmethod
    def from_snapshot(cls, data: bytes, where: str = "snapshot") -> Manifest:
        """The manifest a snapshot holds; IntegrityError (naming ``where``) if it is damaged."""
        return cls({e.path: e for e in decode_entries(data, where)})

    def to_snapshot(self) -> bytes:
        return encode_entries(sorted(self._entries.values(), key=lambda e: e.path))

    @property
    def entries(self) -> Mapping[str, Entry]:
        """A read-only mapping of path -> entry (digest, size)."""
        return MappingProxyType(self._entries)

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = manifest_digest(self._entries.values())
        return self._digest

    @property
    def size(self) -> int:
        """Total bytes of all entries."""
        return sum(e.size for e in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<Manifest {len(self)} files {self.digest[:12]}>"
