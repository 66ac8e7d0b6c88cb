"""Which blobs each token uploaded: the half of a token's blob scope that no log holds.

A token sees the blobs its projects reference (``_scope.py``) and the blobs it uploaded itself
(verified by the server), so that its own commit flow works: missing, upload, flush, append.
The second set must be the same on every server of a store, or a client whose upload went to
one replica and whose append goes to another is refused:

- a PostgreSQL + S3 store keeps it in its database (``_pg_seen.py``, ``asyncart_uploads``),
  each replica caching a bounded number of the pairs it has seen;
- a local store keeps it in memory (:class:`MemorySeen`). A local store has one server
  process (its spool and tokens file are on that machine), and a restarted server forgets:
  a client then uploads again (it does so by itself for the parts of a large append). Its size
  grows with the blobs verified and stored through this process (about 45 bytes a digest at
  a million, ``_digests.py``).

:func:`seen_book` picks one for a store, as ``_tokens.token_book`` does for tokens.
"""

from __future__ import annotations

import sys
from collections.abc import Collection
from typing import Protocol

from .._backends.base import Store
from ._digests import DigestSet


class SeenBook(Protocol):
    """Which blobs (raw 32-byte digests) each token (by id) uploaded."""

    async def add(self, token: str, digests: Collection[bytes]) -> None:
        """Note that ``token`` uploaded ``digests`` (verified and stored)."""
        ...

    async def uploaded(self, token: str, digests: Collection[bytes]) -> set[bytes]:
        """Those of ``digests`` that ``token`` uploaded."""
        ...


class MemorySeen:
    """The :class:`SeenBook` of one server process, in memory (compact: ``_digests.py``)."""

    def __init__(self) -> None:
        self._by_token: dict[str, DigestSet] = {}

    async def add(self, token: str, digests: Collection[bytes]) -> None:
        await self._by_token.setdefault(token, DigestSet()).add(digests)

    async def uploaded(self, token: str, digests: Collection[bytes]) -> set[bytes]:
        held = self._by_token.get(token)
        return set() if held is None else await held.held(digests)


def seen_book(store: Store) -> SeenBook:
    """Where the uploads of ``store``'s tokens are kept: in its database for a PostgreSQL +
    S3 store, else in this process."""
    pg_s3 = sys.modules.get("asyncart._backends.pg_s3")  # no such store without its module
    if pg_s3 is not None and isinstance(store, pg_s3.PostgresS3Store):
        from ._pg_seen import PostgresSeen

        return PostgresSeen(store.log)
    return MemorySeen()
