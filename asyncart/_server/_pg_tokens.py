"""The tokens of a PostgreSQL + S3 store, in its database (``asyncart_tokens``), so that every
server replica sees the same tokens: one that mints or revokes a token changes the table, and
the others reload it within a second (:class:`~._tokens.Grants`).

As in ``tokens.json``, only SHA-256 hashes of tokens are stored (see ``_tokens.py`` for why).
"""

from __future__ import annotations

from collections.abc import Sequence

from .._backends.pg_log import PostgresEventLog
from ._tokens import Grant, find_token, new_token

_COLUMNS = "sha256, id, projects, write, admin, note, created"


class PostgresTokens:
    """The :class:`~._tokens.TokenBook` of a PostgreSQL + S3 store: a table of its log's
    database, reached through the log's connections."""

    def __init__(self, log: PostgresEventLog) -> None:
        self._log = log

    async def create(
        self, projects: Sequence[str], *, write: bool = False, admin: bool = False, note: str = ""
    ) -> str:
        token, digest, g = new_token(projects, write=write, admin=admin, note=note)
        async with self._log.connection() as conn:
            await conn.execute(
                f"INSERT INTO asyncart_tokens ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                digest,
                g.id,
                list(g.projects),
                g.write,
                g.admin,
                g.note,
                g.created,
            )
        return token

    async def list(self) -> list[Grant]:
        return sorted((await self._all()).values(), key=lambda g: (g.created or 0.0, g.id))

    async def revoke(self, token_id: str) -> Grant:
        grant = find_token(await self.list(), token_id, self._log.location)
        async with self._log.connection() as conn:
            await conn.execute("DELETE FROM asyncart_tokens WHERE id = $1", grant.id)
        return grant

    async def load(self) -> dict[str, Grant]:
        """Every grant: a server has few tokens, so the table is read whole, once a second."""
        return await self._all()

    async def _all(self) -> dict[str, Grant]:
        async with self._log.connection() as conn:
            rows = await conn.fetch(f"SELECT {_COLUMNS} FROM asyncart_tokens")
        return {
            row["sha256"]: Grant(
                row["id"],
                tuple(row["projects"]),
                row["write"],
                row["admin"],
                row["note"],
                row["created"],
            )
            for row in rows
        }
