"""The connections of a PostgreSQL backend (asyncpg): a small pool, open while it is held,
and asyncpg's errors translated into ours.

Like the HTTP store's pool, it is open while anyone holds it (:meth:`PgPool.held`, re-entrant)
and closed when the last holder lets go; a call outside any ``held`` block opens one
connection and closes it before returning, so nothing is left open.

asyncpg reads files while it connects (``~/.pgpass``, ``~/.postgresql/*`` for TLS): those
would block the event loop, so the password and the TLS context are resolved once, in a
worker thread, and handed to asyncpg explicitly. Supported there: a password in the DSN,
``$PGPASSWORD`` or the passfile (``$PGPASSFILE``, ``~/.pgpass``); ``sslmode`` (DSN query or
``$PGSSLMODE``; ``prefer`` by default over TCP: TLS if the server offers it, unverified),
``sslrootcert`` (a file, or ``system``), ``sslcert`` and ``sslkey``.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import ssl as ssl_module
import stat
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import anyio.to_thread
import asyncpg

from .._errors import AsyncartError, BackendUnavailableError, InvalidInputError

CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a connection (a host that drops packets fails in this time)."""

_SSL_PARAMS = ("sslmode", "sslrootcert", "sslcert", "sslkey")


@dataclass(frozen=True)
class Where:
    """Where a DSN points, for messages (never its password)."""

    host: str
    port: int
    database: str
    user: str

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def where_of(dsn: str) -> Where:
    """The host, port, database and user that ``dsn`` names (libpq's defaults otherwise)."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        raise BackendUnavailableError(
            f"not a PostgreSQL DSN: {parts.scheme}:// (use postgresql://USER@HOST:PORT/DATABASE)"
        )
    query = dict(parse_qsl(parts.query))
    user = unquote(parts.username or "") or query.get("user") or os.environ.get("PGUSER", "")
    user = user or os.environ.get("LOGNAME") or os.environ.get("USER", "")  # else: getpass's
    host = parts.hostname or query.get("host") or os.environ.get("PGHOST", "localhost")
    try:
        port = parts.port or int(query.get("port") or os.environ.get("PGPORT", "5432"))
    except ValueError:
        raise InvalidInputError(
            f"the port of postgresql://{parts.hostname or ''}... is not a number"
        ) from None
    database = unquote(parts.path.lstrip("/")) or query.get("dbname") or user
    return Where(host, port, database, user)


class PgPool:
    """Up to ``size`` connections to the database of ``dsn``, open while held."""

    def __init__(self, dsn: str, size: int) -> None:
        self.where = where_of(dsn)
        self._dsn = dsn
        self._size = size
        self._options: dict[str, Any] | None = None  # resolved off the loop, once
        self._idle: list[asyncpg.Connection] = []
        self._slots: asyncio.Semaphore | None = None
        self._holders = 0
        self._generation = 0  # bumped by aclose: connections of an older one are not kept

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """Keep the connections open for the block (re-entrant)."""
        self._holders += 1
        try:
            yield
        finally:
            self._holders -= 1
            if self._holders == 0:
                await self.aclose()

    async def aclose(self) -> None:
        """Close the idle connections now; those in use close when they are given back."""
        self._generation += 1
        idle, self._idle = self._idle, []
        with anyio.CancelScope(shield=True):  # a cancelled holder still closes them
            for conn in idle:
                await _close(conn)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection for the block (asyncpg's errors in it are translated)."""
        async with self.held():
            if self._slots is None:
                self._slots = asyncio.Semaphore(self._size)
            async with self._slots:
                generation = self._generation
                conn = self._idle.pop() if self._idle else await self._connect()
                healthy = True
                try:
                    with translated(self.where):
                        yield conn
                except BaseException as e:
                    healthy = isinstance(e, Exception)  # cancelled mid-query: state unknown
                    raise
                finally:
                    await self._give_back(conn, generation, healthy)

    async def _give_back(self, conn: asyncpg.Connection, generation: int, healthy: bool) -> None:
        """Keep ``conn`` for the next call if it is idle and clean, else close it."""
        if not healthy or conn.is_closed() or conn.is_in_transaction():
            conn.terminate()
        elif generation != self._generation:  # aclose() ran meanwhile
            with anyio.CancelScope(shield=True):
                await _close(conn)
        else:
            self._idle.append(conn)

    async def _connect(self) -> asyncpg.Connection:
        if self._options is None:
            self._options = await anyio.to_thread.run_sync(_resolve, self._dsn, self.where)
        options = self._options
        with translated(self.where):
            try:
                return await _open(options)
            except ConnectionError as e:
                if options.get("prefer") and "SSL" in str(e):  # sslmode=prefer: no TLS there
                    options = self._options = {**options, "ssl": False, "prefer": False}
                    return await _open(options)
                raise


async def _open(options: dict[str, Any]) -> asyncpg.Connection:
    kwargs = {key: value for key, value in options.items() if key != "prefer"}
    conn: asyncpg.Connection = await asyncpg.connect(**kwargs, timeout=CONNECT_TIMEOUT)
    return conn


async def _close(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), 5)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        conn.terminate()


@contextmanager
def translated(where: Where) -> Iterator[None]:
    """Turn asyncpg's and the network's errors raised in the block into our one-line
    :class:`BackendUnavailableError` (callers translate those they expect, such as a unique
    violation, before they get here)."""
    try:
        yield
    except AsyncartError:
        raise
    except Exception as error:
        ours = _translate(error, where)
        if ours is None:
            raise
        raise ours from error


def _translate(error: BaseException, where: Where) -> BackendUnavailableError | None:
    """Our error for ``error``, or None if it is not asyncpg's or the network's."""
    at = f"PostgreSQL at {where}"
    if isinstance(error, asyncpg.InvalidAuthorizationSpecificationError):  # and bad passwords
        user = where.user or "the OS user"
        return BackendUnavailableError(
            f"{at} refused user {user!r}: {_first_line(error)} (check the user and password "
            "in the DSN, $PGPASSWORD or ~/.pgpass)"
        )
    if isinstance(error, asyncpg.InvalidCatalogNameError):
        return BackendUnavailableError(
            f"{at} has no database {where.database!r}: create it (`createdb "
            f"{where.database}`, or `asyncart init`)"
        )
    if isinstance(error, asyncpg.UndefinedTableError):
        return schema_missing(where)
    if isinstance(error, asyncpg.PostgresError | asyncpg.InterfaceError):
        return BackendUnavailableError(f"{at} failed: {_first_line(error)} (retry later)")
    if isinstance(error, OSError | TimeoutError):
        why = _first_line(error) or type(error).__name__
        return BackendUnavailableError(
            f"cannot reach {at} ({why}): check that it runs and that the DSN's host and "
            "port are right"
        )
    return None


def schema_missing(where: Where) -> BackendUnavailableError:
    """The error for a database without asyncart's tables."""
    return BackendUnavailableError(
        f"database {where.database!r} at {where} has no asyncart schema: create it with "
        "`asyncart init` (PostgresEventLog.create())"
    )


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else ""


# -- resolving what asyncpg would read from files (in a worker thread) -------------------------


def _resolve(dsn: str, where: Where) -> dict[str, Any]:
    """asyncpg's connect arguments for ``dsn``, with the password and TLS context resolved
    here (asyncpg would read files for them on the event loop)."""
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query)
    params = dict(query)
    rest = [(key, value) for key, value in query if key not in _SSL_PARAMS]
    clean = urlunsplit(parts._replace(query=urlencode(rest)))
    password = unquote(parts.password) if parts.password is not None else None
    password = password if password is not None else params.get("password")
    if password is None:
        password = os.environ.get("PGPASSWORD")
    if password is None:
        password = _from_passfile(where) or ""
    mode = params.get("sslmode") or os.environ.get("PGSSLMODE") or "prefer"
    if where.host.startswith("/"):  # a Unix socket: libpq does not use TLS there
        mode = "disable"
    return {
        "dsn": clean,
        "user": where.user or getpass.getuser(),  # the OS user, as libpq
        "password": password,
        "ssl": _ssl_context(mode, params),
        "prefer": mode in ("allow", "prefer"),
    }


def _ssl_context(mode: str, params: dict[str, str]) -> ssl_module.SSLContext | bool:
    """The TLS context for ``sslmode`` (False: no TLS)."""
    if mode == "disable":
        return False
    if mode not in ("allow", "prefer", "require", "verify-ca", "verify-full"):
        raise BackendUnavailableError(
            f"unknown sslmode {mode!r}: use disable, prefer, require, verify-ca or verify-full"
        )
    context = ssl_module.SSLContext(ssl_module.PROTOCOL_TLS_CLIENT)
    context.check_hostname = mode == "verify-full"
    root = params.get("sslrootcert") or os.environ.get("PGSSLROOTCERT")
    default_root = Path.home() / ".postgresql" / "root.crt"
    if root is None and default_root.is_file():
        root = str(default_root)
    if mode in ("verify-ca", "verify-full") or (mode == "require" and root):
        if root == "system":
            context.load_default_certs()
        elif root:
            context.load_verify_locations(cafile=root)
        else:
            raise BackendUnavailableError(
                f"sslmode={mode} needs a root certificate: set sslrootcert=FILE in the DSN "
                "(or sslrootcert=system)"
            )
        context.verify_mode = ssl_module.CERT_REQUIRED
    else:
        context.verify_mode = ssl_module.CERT_NONE
    cert = params.get("sslcert") or os.environ.get("PGSSLCERT")
    if cert:
        context.load_cert_chain(cert, params.get("sslkey") or os.environ.get("PGSSLKEY"))
    return context


def _from_passfile(where: Where) -> str | None:
    """The password the passfile holds for ``where`` (libpq's format), None if none."""
    path = Path(os.environ.get("PGPASSFILE") or Path.home() / ".pgpass")
    try:
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            return None  # libpq ignores a passfile others can read
        lines = path.read_text().splitlines()
    except OSError:
        return None
    wanted = (where.host, str(where.port), where.database, where.user)
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = _passfile_fields(line)
        if len(fields) == 5 and all(f in ("*", w) for f, w in zip(fields, wanted, strict=False)):
            return fields[4]
    return None


def _passfile_fields(line: str) -> list[str]:
    """``host:port:db:user:password``, with ``\\:`` and ``\\\\`` escaped."""
    fields: list[str] = []
    current, escaped = "", False
    for char in line:
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            escaped = True
        elif char == ":" and len(fields) < 4:
            fields.append(current)
            current = ""
        else:
            current += char
    return [*fields, current]
