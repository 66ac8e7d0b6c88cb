"""The HTTP store: a client of ``asyncart serve``, with the same contracts as the local store.

Example::

    async with asyncart.init(project="demo", store="http://127.0.0.1:8080", token=token) as run:
        ...

The token comes from the ``token`` argument, else ``$ASYNCART_TOKEN``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from ssl import SSLContext
from urllib.parse import quote

from .._errors import ConflictError
from ._http_client import HttpClient, RetryPolicy, error_detail
from ._wire import MSGPACK, TOKEN_ENV, pack, unpack
from .http_blobs import PART_SIZE, PART_THRESHOLD, HttpBlobStore


class HttpEventLog:
    """An :class:`~asyncart._backends.base.EventLog` on a server."""

    def __init__(self, client: HttpClient) -> None:
        self._client = client

    async def read(self, stream: str, from_seq: int = 0) -> list[bytes]:
        records: list[bytes] = []
        while True:  # pages of ~8 MiB; the log is append-only, so pages always join up
            reply = await self._client.request(
                "GET", _log(stream), params={"from_seq": from_seq + len(records)}
            )
            page = unpack(reply.body)
            records += page["records"]
            if not page["more"]:
                return records

    async def append(self, stream: str, payloads: Sequence[bytes], expected_seq: int) -> int:
        payloads = list(payloads)
        body = pack(payloads)
        reply = await self._client.request(
            "POST",
            _log(stream),
            params={"expected_seq": expected_seq},
            body=lambda: body,
            headers={"Content-Type": MSGPACK},
            ok=(200, 409),
        )
        if reply.status == 200:
            head: int = unpack(reply.body)["head"]
            return head
        head = error_detail(reply.body)["head"]
        if reply.retried and await self._landed(stream, payloads, expected_seq):
            return expected_seq + len(payloads)  # our first attempt did append; the reply was lost
        raise ConflictError(stream, expected_seq, head)

    async def _landed(self, stream: str, payloads: list[bytes], expected_seq: int) -> bool:
        """Whether ``payloads`` are the records at ``expected_seq`` (records are unique: they
        carry a time, an actor and the previous record's hash)."""
        return (await self.read(stream, expected_seq))[: len(payloads)] == payloads

    async def streams(self, prefix: str = "") -> list[str]:
        reply = await self._client.request("GET", "/streams", params={"prefix": prefix})
        names: list[str] = unpack(reply.body)
        return names


def _log(stream: str) -> str:
    return "/log/" + quote(stream, safe="/")


class HttpStore:
    """A store served by ``asyncart serve`` at ``url``, reached through one connection pool.

    The pool is open while the store is held: inside ``async with store:``, a run, an ``Api``
    in ``async with``, or one call such as ``save`` or ``download``. A store passed as a URL
    thus leaves no connection open once the call returns.

    Args:
        url: ``http://host:port`` (or https).
        token: a bearer token (``asyncart token create``); default ``$ASYNCART_TOKEN``.
        connections: the most connections open to the server at once.
        retry: attempts and backoff for connection errors, 5xx and 429.
        part_size: files of ``part_threshold`` bytes or more are uploaded in parts this large,
            in parallel; a dropped upload resumes without resending finished parts.
        ssl: the TLS context for an ``https`` server whose certificate the system does not
            trust (a private CA: ``ssl.create_default_context(cafile=...)``); or start the
            program with ``SSL_CERT_FILE`` in its environment (aiohttp reads it once).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        connections: int = 16,
        retry: RetryPolicy | None = None,
        part_size: int = PART_SIZE,
        part_threshold: int = PART_THRESHOLD,
        ssl: SSLContext | None = None,
    ) -> None:
        self.location = url.rstrip("/")
        self._client = HttpClient(
            self.location,
            token or os.environ.get(TOKEN_ENV),
            connections=connections,
            retry=retry,
            ssl=ssl,
        )
        self.log = HttpEventLog(self._client)
        self.blobs = HttpBlobStore(self._client, part_size, part_threshold)

    def held(self) -> AbstractAsyncContextManager[object]:
        """Keep the connection pool open for the block (re-entrant)."""
        return self._client.held()

    async def aclose(self) -> None:
        """Close the connection pool now."""
        await self._client.aclose()

    async def __aenter__(self) -> HttpStore:
        """Hold the connection pool until the block ends."""
        self._client.hold()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._client.release()

    def __repr__(self) -> str:
        return f"HttpStore({self.location!r})"
