"""The HTTP store: a client of ``asyncart serve``, with the same contracts as the local store.

Example::

    async with asyncart.init(project="demo", store="http://127.0.0.1:8080", token=token) as run:
        ...

The token comes from the ``token`` argument, else ``$ASYNCART_TOKEN``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from ssl import SSLContext
from urllib.parse import quote

import anyio

from .._errors import BackendUnavailableError, ConflictError, InvalidInputError, NotFoundError
from ._http_client import HttpClient, Reply, RetryPolicy, error_detail
from ._wire import MSGPACK, TOKEN_ENV, pack, unpack
from .http_blobs import PART_SIZE, PART_THRESHOLD, HttpBlobStore

DEFAULT_MAX_REQUEST = 64 << 20
"""The request limit of a server that has not said otherwise (``Limits.max_request``)."""
STAGED_PART = 8 << 20
"""The most bytes of records in one part of a staged append."""
_SMALL = 64 << 10  # appends this small are sent at once (a 413 says when that was wrong)
_STAGINGS = 3  # stagings lost in a row before an append gives up


class HttpEventLog:
    """An :class:`~asyncart._backends.base.EventLog` on a server.

    The server derives each stream's note and checkpoint itself from the records it accepts
    (a client could forge them), so :meth:`append` ignores ``note`` and :meth:`put_checkpoint`
    does nothing. An append too large for one request (``--max-request-bytes``) is staged in
    parts and published at once: still all or nothing.
    """

    def __init__(self, client: HttpClient) -> None:
        self._client = client
        self._max_request: int | None = None  # the server's, once asked

    async def read(self, stream: str, from_seq: int = 0, limit: int | None = None) -> list[bytes]:
        records: list[bytes] = []
        while limit is None or len(records) < limit:  # the log is append-only: pages join up
            params = {"from_seq": from_seq + len(records)}
            if limit is not None:
                params["limit"] = limit - len(records)
            page = unpack((await self._client.request("GET", _log(stream), params=params)).body)
            records += page["records"]
            if not page["more"] or not page["records"]:
                break
        return records if limit is None else records[:limit]  # an older server ignores it

    async def append(
        self, stream: str, payloads: Sequence[bytes], expected_seq: int, note: bytes = b""
    ) -> int:
        """Append ``payloads`` at ``expected_seq``; ``note`` is ignored (the server derives
        it). Raises ConflictError, or InvalidInputError when the server refuses a record."""
        payloads = list(payloads)
        size = packed_size(payloads)
        limit = self._max_request
        if limit is None and size > _SMALL:
            limit = await self._learn_limit()
        if size <= (limit or DEFAULT_MAX_REQUEST):
            reply = await self._post(stream, payloads, expected_seq)
            if reply.status != 413:
                return await self._appended(stream, payloads, expected_seq, reply)
            limit = await self._learn_limit()  # the server's limit is lower than we thought
        return await self._staged(stream, payloads, expected_seq, limit or DEFAULT_MAX_REQUEST)

    async def _post(self, stream: str, payloads: list[bytes], expected_seq: int) -> Reply:
        body = pack(payloads)
        return await self._client.request(
            "POST",
            _log(stream),
            params={"expected_seq": expected_seq},
            body=lambda: body,
            headers={"Content-Type": MSGPACK},
            ok=(200, 409, 413),
        )

    async def _appended(
        self, stream: str, payloads: list[bytes], expected_seq: int, reply: Reply
    ) -> int:
        """The head after a publishing request, or ConflictError."""
        if reply.status == 200:
            head: int = unpack(reply.body)["head"]
            return head
        head = error_detail(reply.body)["head"]
        if reply.retried and await self._landed(stream, payloads, expected_seq):
            return expected_seq + len(payloads)  # our first attempt did append; the reply was lost
        raise ConflictError(stream, expected_seq, head)

    async def _landed(self, stream: str, payloads: list[bytes], expected_seq: int) -> bool:
        """Whether ``payloads`` are the records at ``expected_seq`` (records are unique: they
        carry a time, an actor and the previous record's hash). A server that validates
        appends restamps them, and answers a repeated append itself."""
        return await self.read(stream, expected_seq, len(payloads)) == payloads

    async def _learn_limit(self) -> int:
        """The server's request limit (asked once; a server too old to say has the default)."""
        try:
            reply = await self._client.request("GET", "/limits")
            self._max_request = int(unpack(reply.body)["max_request"])
        except NotFoundError:
            self._max_request = DEFAULT_MAX_REQUEST
        return self._max_request

    async def _staged(
        self, stream: str, payloads: list[bytes], expected_seq: int, max_request: int
    ) -> int:
        """Stage ``payloads`` in parts below ``max_request`` bytes, then publish them in one
        append. A staging the server lost (it restarted, or the staging expired) is staged
        again: if the first publish had landed, the server recognises the records."""
        parts = split_records(payloads, STAGED_PART, max_request)
        for _ in range(_STAGINGS):
            staging = await self._stage(stream, parts)
            if staging is None:
                continue
            reply = await self._client.request(
                "POST",
                _log(stream),
                params={
                    "expected_seq": expected_seq,
                    "staged": staging,
                    "parts": len(parts),
                    "records": len(payloads),
                },
                ok=(200, 404, 409),
            )
            if reply.status != 404:
                return await self._appended(stream, payloads, expected_seq, reply)
        raise BackendUnavailableError(
            f"the server at {self._client.url} lost {_STAGINGS} staged appends to {stream!r} "
            "in a row (is it restarting?); retry later"
        )

    async def _stage(self, stream: str, parts: list[list[bytes]]) -> str | None:
        """Send ``parts`` to a new staging; its id, or None if the server lost it."""
        reply = await self._client.request("POST", "/staged/" + quote(stream, safe="/"))
        staging: str = unpack(reply.body)["staged"]
        try:
            for index, part in enumerate(parts):
                sent = await self._client.request(
                    "PUT",
                    f"/staged/{staging}/{index}",
                    body=functools.partial(pack, part),  # packed again on a retry: no copy kept
                    headers={"Content-Type": MSGPACK},
                    ok=(201, 404),
                )
                if sent.status == 404:
                    return None
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self._client.request("DELETE", f"/staged/{staging}", ok=(200, 404))
            raise
        return staging

    async def streams(self, prefix: str = "") -> list[str]:
        reply = await self._client.request("GET", "/streams", params={"prefix": prefix})
        names: list[str] = unpack(reply.body)
        return names

    async def notes(self, prefix: str) -> dict[str, bytes]:
        reply = await self._client.request("GET", "/notes", params={"prefix": prefix})
        found: dict[str, bytes] = unpack(reply.body)
        return found

    async def checkpoint(self, stream: str) -> bytes | None:
        path = "/checkpoint/" + quote(stream, safe="/")
        reply = await self._client.request("GET", path, ok=(200, 404))
        return reply.body if reply.status == 200 else None

    async def put_checkpoint(self, stream: str, data: bytes) -> None:
        """Does nothing: the server saves checkpoints itself, from the records it accepted."""


def packed_size(payloads: Sequence[bytes]) -> int:
    """The size of ``pack(payloads)``, without packing them."""
    return _array_header(len(payloads)) + sum(_bin_size(len(p)) for p in payloads)


def split_records(payloads: Sequence[bytes], target: int, limit: int) -> list[list[bytes]]:
    """``payloads`` in runs whose packed lists are about ``target`` bytes (a larger record
    travels alone) and at most ``limit``.

    Raises:
        InvalidInputError: one record alone is larger than ``limit``.
    """
    parts: list[list[bytes]] = []
    size = 0
    for payload in payloads:
        need = _bin_size(len(payload))
        if need + 5 > limit:  # 5: the largest array header
            raise InvalidInputError(
                f"a record of {len(payload)} bytes does not fit in a request to the server "
                f"(at most {limit} bytes: its --max-request-bytes; HTTP 413); nothing was stored"
            )
        if not parts or size + need > min(target, limit):
            parts.append([])
            size = 5
        parts[-1].append(payload)
        size += need
    return parts


def _array_header(length: int) -> int:
    return 1 if length < 16 else 3 if length < 1 << 16 else 5


def _bin_size(length: int) -> int:
    return length + (2 if length < 1 << 8 else 3 if length < 1 << 16 else 5)


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
