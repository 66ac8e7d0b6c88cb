"""The connection pool of an HTTP store (an aiohttp session, open while the store is held):
bounded, with retries and backoff, errors translated.

Connection errors, 5xx and 429 are retried with exponential backoff and full jitter; any other
4xx is the caller's mistake and is raised at once, as the asyncart error the server named. So is
507 (the server's disk is full): a :class:`BackendUnavailableError` that says so, not retried.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any

import aiohttp
import anyio

from .._errors import (
    AccessDeniedError,
    AsyncartError,
    BackendUnavailableError,
    ConflictError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
)
from ._wire import PREFIX

Body = Callable[[], Any]
"""Makes a fresh request body for each attempt (a generator cannot be sent twice)."""

TRANSIENT = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: ``attempts`` in all, sleeping ``base * 2**n`` (jittered, capped)."""

    attempts: int = 6
    base: float = 0.1
    cap: float = 5.0

    def delay(self, attempt: int) -> float:
        """Full jitter: spreads retries of many clients hitting one restarted server."""
        return random.uniform(0, min(self.cap, self.base * 2**attempt))


class ServerError(Exception):
    """A response with a status worth retrying (5xx, 429); internal to this module."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status = status


@dataclass
class Reply:
    """A finished response: status, body, and whether an earlier attempt failed midway."""

    status: int
    body: bytes
    retried: bool


class HttpClient:
    """The connection pool to one server, open while anyone holds it.

    Every request holds the pool while it runs, and :meth:`held` holds it across many requests
    (a store in ``async with``, a run, a ``save``); when the last holder lets go, the pool
    closes. So a store opened from a URL for one call leaves no connection behind.
    """

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        connections: int = 16,
        retry: RetryPolicy | None = None,
        ssl: SSLContext | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._ssl = ssl
        self.retry = retry or RetryPolicy()
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._holders = 0

    def hold(self) -> aiohttp.ClientSession:
        """Keep the pool open until a matching :meth:`release`; return its session."""
        self._holders += 1
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                connector=aiohttp.TCPConnector(limit=self._connections, ssl=self._ssl or True),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120),
                auto_decompress=False,
            )
        return self._session

    async def release(self) -> None:
        """Let go of a :meth:`hold`; the last holder closes the pool."""
        assert self._holders > 0, "release() without hold()"
        self._holders -= 1
        if self._holders == 0:
            await self.aclose()

    @asynccontextmanager
    async def held(self) -> AsyncIterator[aiohttp.ClientSession]:
        """Keep the pool open for the block (re-entrant); yield its session."""
        session = self.hold()
        try:
            yield session
        finally:
            await self.release()

    async def aclose(self) -> None:
        """Close every connection now (the next request opens a new pool)."""
        session, self._session = self._session, None
        if session is not None:
            with anyio.CancelScope(shield=True):  # a cancelled holder still closes the pool
                await session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Body | None = None,
        headers: dict[str, str] | None = None,
        ok: Collection[int] = (200, 201),
        done: Callable[[], Awaitable[bool]] | None = None,
    ) -> Reply:
        """Send a request, retrying transient failures; raise our error for any other status.

        ``done`` is asked before each retry whether the failed attempt took effect after all
        (its reply was lost); if so, nothing is sent again and an empty 201 reply returned.
        """
        retried = False
        for attempt in range(self.retry.attempts):
            try:
                if retried and done is not None and await _asks(done):
                    return Reply(201, b"", retried)
                async with (
                    self.held() as session,
                    session.request(
                        method,
                        self.url + PREFIX + path,
                        params=params,
                        data=body() if body else None,
                        headers=headers,
                    ) as response,
                ):
                    data = await response.read()
                    if response.status in ok:
                        return Reply(response.status, data, retried)
                    raise_for(response.status, data, self.url)
            except (*TRANSIENT, ServerError) as e:
                if isinstance(e.__cause__, AsyncartError):  # the body failed, not the network
                    raise e.__cause__ from None
                if isinstance(e, aiohttp.ClientConnectorCertificateError):  # fails every time
                    raise tls_failed(self.url, e) from e
                if attempt + 1 == self.retry.attempts:
                    raise unavailable(self.url, e, attempt + 1) from e
                retried = True
                await asyncio.sleep(self.retry.delay(attempt))
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def stream(
        self, path: str, headers: dict[str, str] | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET with the body left to read (one attempt: the caller resumes with ``Range``)."""
        async with self.held() as session:
            try:
                response = await session.get(self.url + PREFIX + path, headers=headers)
            except aiohttp.ClientConnectorCertificateError as e:
                raise tls_failed(self.url, e) from e
            async with response:
                if response.status not in (200, 206):
                    raise_for(response.status, await response.read(), self.url)
                yield response


async def _asks(done: Callable[[], Awaitable[bool]]) -> bool:
    """``done()``, or False when the server cannot tell yet (then the request is resent)."""
    try:
        return await done()
    except BackendUnavailableError:
        return False


def unavailable(url: str, error: BaseException, attempts: int) -> BackendUnavailableError:
    """The error for a server that kept failing."""
    what = str(error) or type(error).__name__
    return BackendUnavailableError(
        f"the asyncart server at {url} failed {attempts} times ({what}); "
        "check that it is running and reachable, then retry"
    )


def tls_failed(url: str, error: BaseException) -> BackendUnavailableError:
    """The error for a certificate the client does not trust (a retry would fail the same)."""
    return BackendUnavailableError(
        f"TLS with {url} failed ({error}); for a private CA pass HttpStore(ssl=...) "
        "or start the program with SSL_CERT_FILE set"
    )


def raise_for(status: int, body: bytes, url: str) -> None:
    """Raise the error a non-success response stands for (ServerError when worth a retry)."""
    detail = error_detail(body)
    code, message = detail.get("error", ""), detail["message"]
    if status == 507:  # a retry would fail the same way until someone frees space
        raise BackendUnavailableError(f"the server at {url} is out of disk space: {message}")
    if (status >= 500 and code != "integrity") or status == 429:
        raise ServerError(status, message)
    where = f"server {url}: {message}"
    if status in (401, 403):
        raise AccessDeniedError(f"{where} (check the token: ASYNCART_TOKEN or token=)")
    if status == 404:
        raise NotFoundError(where)
    if status == 409:
        raise ConflictError(detail.get("stream", "?"), -1, detail.get("head", -1))
    if status in (422, 500):  # 422: a body did not hash to its digest; 500: a damaged store
        raise IntegrityError(where)
    raise InvalidInputError(f"{where} (HTTP {status})")


def error_detail(body: bytes) -> dict[str, Any]:
    """A JSON error body as a dict with at least a ``message``."""
    try:
        detail = json.loads(body)
        if isinstance(detail, dict) and "message" in detail:
            return detail
    except ValueError:
        pass
    return {"message": body.decode(errors="replace")[:200]}
