"""References: entries whose bytes stay where they are (``file://``, ``http(s)://``, ``s3://``).

A reference entry records where its bytes are (``Entry.ref``) instead of storing them as a blob:
a commit uploads nothing for it, the collector keeps nothing for it, and a download fetches it
from its URI.

With ``checksum`` (the default) the bytes are read once when the reference is added, off the
event loop, and the entry gets their BLAKE3 digest and size, like any file: a download checks
them (``IntegrityError`` naming the file and the URI when the source changed). Without it the
source is not read: the entry is tracked by its URI, as W&B does, and its digest is derived from
the URI and the ETag when one is known (:func:`derived_digest`), so logging the same URI again
makes a new version only if its ETag changed; such an entry is downloaded as it is then, unchecked.

``Entry.ref`` holds the URI, then, for an unchecked entry whose source sent an ETag, a newline
and the ETag (what its digest is derived from); :func:`ref_uri` is the URI alone.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
import blake3

from ._domain.events import Entry
from ._domain.manifest import Manifest
from ._errors import InvalidInputError

DEFAULT_MAX_OBJECTS = 10_000
"""The most files a directory or prefix reference may hold unless told otherwise (as W&B)."""

_IO = "asyncart._reference_io"  # the fetching code: aiohttp and botocore, imported when used
SCHEMES = frozenset({"file", "http", "https", "s3"})
MAX_REF_CHARS = 8192
_MARK = "asyncart.ref/1"  # the domain of derived digests: never the BLAKE3 of any content's


def derived_digest(ref: str) -> str:
    """The digest of an unchecked reference entry: BLAKE3 of a fixed mark, a newline and the
    entry's ``ref`` (the URI, and the ETag if known)."""
    return blake3.blake3(f"{_MARK}\n{ref}".encode()).hexdigest()


def ref_uri(ref: str) -> str:
    """The URI of an entry's ``ref`` (without the ETag an unchecked entry may record)."""
    return ref.partition("\n")[0]


def is_checked(entry: Entry) -> bool:
    """Whether a reference entry's digest is its content's (added with ``checksum``)."""
    return entry.ref is None or entry.digest != derived_digest(entry.ref)


def check_ref(ref: object) -> str:
    """A well formed ``ref`` (what the server accepts in a record).

    Raises:
        InvalidInputError: not a string of a known scheme, too long, or with control
            characters in its URI.
    """
    if not isinstance(ref, str) or len(ref) > MAX_REF_CHARS:
        raise InvalidInputError(f"a reference must be a URI of at most {MAX_REF_CHARS} chars")
    uri, _, etag = ref.partition("\n")
    scheme = urlsplit(uri).scheme
    if scheme not in SCHEMES:
        raise InvalidInputError(
            f"{uri[:200]!r} is not a reference URI: use file://, http(s):// or s3://"
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in uri + etag):
        raise InvalidInputError(f"reference {uri[:200]!r} holds control characters")
    return ref


# -- adding and fetching (the I/O lives in ``_reference_io``) --------------------------------


async def _io() -> Any:
    """The I/O module, imported in a worker thread (aiohttp and botocore take a while)."""
    return await anyio.to_thread.run_sync(importlib.import_module, _IO)


async def reference_entries(
    uri: str, name: str | None, checksum: bool, max_objects: int | None
) -> list[Entry]:
    """The entries that ``add_reference(uri, name, checksum, max_objects)`` adds.

    Raises:
        InvalidInputError: a bad URI, name or ``max_objects``, or more objects than it allows.
        NotFoundError: nothing is at the URI.
        BackendUnavailableError: the source cannot be reached.
    """
    limit = DEFAULT_MAX_OBJECTS if max_objects is None else max_objects
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidInputError(f"max_objects must be an int >= 1, got {max_objects!r}")
    check_ref(uri)
    if "\n" in uri:
        raise InvalidInputError("a reference URI has no newline")
    entries: list[Entry] = await (await _io()).reference_entries(uri, name, checksum, limit)
    return entries


async def fetch_references(entries: list[Entry], targets: list[str], concurrency: int) -> int:
    """Write each reference entry at its target (its directory made and checked already),
    fetched from its URI; return the bytes fetched. A checked entry whose target holds its
    content already is left in place; its bytes are verified as they are written.

    Raises:
        IntegrityError: a checked entry's source no longer has its content (naming both).
        NotFoundError, BackendUnavailableError: the source is gone or cannot be reached.
    """
    fetched: int = await (await _io()).fetch_references(entries, targets, concurrency)
    return fetched


def split_refs(entries: Manifest | Sequence[Entry]) -> tuple[list[Entry], list[Entry]]:
    """The blob entries and the reference entries of ``entries``."""
    blobs: list[Entry] = []
    refs: list[Entry] = []
    for entry in entries.iter_entries() if isinstance(entries, Manifest) else entries:
        (blobs if entry.ref is None else refs).append(entry)
    return blobs, refs
