"""The uploads of a PostgreSQL + S3 store's tokens, in its database (``asyncart_uploads``), so
that a blob uploaded through one server replica is the token's on every other one.

Each replica remembers the (token, digest) pairs it has seen, the least recently used first
to go past :data:`CACHED`; only the digests not remembered are asked of the database, in
batches (``digest = ANY($2)`` on the primary key). Only pairs that are there are remembered:
an upload through another replica is found the next time it is asked about.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection

from .._backends.pg_log import PostgresEventLog

CACHED = 100_000
"""The (token, digest) pairs one replica remembers (about 15 MB)."""
BATCH = 10_000
"""Digests per statement."""

_ADD = """
INSERT INTO asyncart_uploads (token, digest) SELECT $1, unnest($2::bytea[])
ON CONFLICT DO NOTHING
"""
_FIND = "SELECT digest FROM asyncart_uploads WHERE token = $1 AND digest = ANY($2::bytea[])"


class PostgresSeen:
    """The :class:`~._seen.SeenBook` of a PostgreSQL + S3 store, through its log's
    connections."""

    def __init__(self, log: PostgresEventLog, cached: int = CACHED) -> None:
        self._log, self._cached = log, cached
        self._known: OrderedDict[bytes, None] = OrderedDict()  # token id NUL digest

    async def add(self, token: str, digests: Collection[bytes]) -> None:
        # sorted: two replicas inserting overlapping sets take the rows' locks in one order,
        # so they cannot deadlock
        ordered = sorted(set(digests))
        if not ordered:
            return
        async with self._log.connection() as conn:
            for i in range(0, len(ordered), BATCH):
                await conn.execute(_ADD, token, ordered[i : i + BATCH])
        self._remember(token, ordered)

    async def uploaded(self, token: str, digests: Collection[bytes]) -> set[bytes]:
        found, ask = set(), []
        for digest in set(digests):
            key = _key(token, digest)
            if key in self._known:
                self._known.move_to_end(key)
                found.add(digest)
            else:
                ask.append(digest)
        if ask:
            async with self._log.connection() as conn:
                for i in range(0, len(ask), BATCH):
                    rows = await conn.fetch(_FIND, token, ask[i : i + BATCH])
                    found.update(bytes(row[0]) for row in rows)
            self._remember(token, [d for d in ask if d in found])
        return found

    def _remember(self, token: str, digests: Collection[bytes]) -> None:
        for digest in digests:
            key = _key(token, digest)
            self._known[key] = None
            self._known.move_to_end(key)
        while len(self._known) > self._cached:
            self._known.popitem(last=False)


def _key(token: str, digest: bytes) -> bytes:
    return token.encode() + b"\0" + digest
