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
from typing import Any
from urllib.parse import quote

import anyio

from .._errors import CollectedError, ConflictError, InvalidInputError, NotFoundError
from .._threads import maybe_thread
from ._http_client import HttpClient, Reply, RetryPolicy, error_detail, raise_for
from ._wire import MSGPACK, TOKEN_ENV, pack, unpack
from .http_blobs import PART_SIZE, PART_THRESHOLD, HttpBlobStore, _first_error

DEFAULT_MAX_REQUEST = 64 << 20
"""The request limit of a server that has not said otherwise (``Limits.max_request``)."""
DEFAULT_MAX_STAGED = 512 << 20
"""The bytes of records in one append of a server that has not said otherwise
(``Limits.max_staged``)."""
STAGED_PART = 8 << 20
"""About the most bytes of records in one part of an append too large for one request (a
larger record travels alone)."""
_SMALL = 64 << 10  # appends this small are sent at once (a 413 says when that was wrong)
_PARTS_AT_ONCE = 4  # parts uploaded at once


class HttpEventLog:
    """An :class:`~asyncart._backends.base.EventLog` on a server.

    The server derives each stream's note and checkpoint itself from the records it accepts
    (a client could forge them), so :meth:`append` ignores ``note`` and :meth:`put_checkpoint`
    does nothing. An append too large for one request (``--max-request-bytes``) is uploaded
    in parts, as blobs, and published at once: still all or nothing, and any replica of the
    server can take any of its requests.
    """

    def __init__(self, client: HttpClient, blobs: HttpBlobStore) -> None:
        self._client, self._blobs = client, blobs
        self._max_request: int | None = None  # the server's, once asked
        self._max_staged = DEFAULT_MAX_STAGED

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
        self,
        stream: str,
        payloads: Sequence[bytes],
        expected_seq: int,
        note: bytes = b"",
        *,
        epoch: int | None = None,
    ) -> int:
        """Append ``payloads`` at ``expected_seq``; ``note`` is ignored (the server derives
        it), ``epoch`` checked by the server. Raises ConflictError (CollectedError), or
        InvalidInputError when the server refuses a record."""
        payloads = list(payloads)
        size = packed_size(payloads)
        limit = self._max_request
        params = {"expected_seq": expected_seq}
        if epoch is not None:
            params["epoch"] = epoch
        if limit is None and size > _SMALL:
            limit = await self._learn_limit()
        if size <= (limit or DEFAULT_MAX_REQUEST):
            reply = await self._post(stream, payloads, params)
            if reply.status != 413:
                return await self._appended(stream, payloads, expected_seq, reply)
            await self._learn_limit()  # the server's limit is lower than we thought
        return await self._in_parts(stream, payloads, params)

    async def _post(self, stream: str, payloads: list[bytes], params: dict[str, int]) -> Reply:
        body = pack(payloads)
        return await self._client.request(
            "POST",
            _log(stream),
            params=params,
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
        detail = error_detail(reply.body)
        if reply.retried and await self._landed(stream, payloads, expected_seq):
            return expected_seq + len(payloads)  # our first attempt did append; the reply was lost
        if detail.get("error") == "collected":
            raise CollectedError(stream, expected_seq, detail["epoch"], detail["current"])
        raise ConflictError(stream, expected_seq, detail["head"])

    async def _landed(self, stream: str, payloads: list[bytes], expected_seq: int) -> bool:
        """Whether ``payloads`` are the records at ``expected_seq`` (records are unique: they
        carry a time, an actor and the previous record's hash). A server that validates
        appends restamps them, and answers a repeated append itself."""
        return await self.read(stream, expected_seq, len(payloads)) == payloads

    async def _learn_limit(self) -> int:
        """The server's request limit (asked once; a server too old to say has the default)."""
        try:
            reply = await self._client.request("GET", "/limits")
            limits = unpack(reply.body)
            self._max_request = int(limits["max_request"])
            self._max_staged = int(limits.get("max_staged", DEFAULT_MAX_STAGED))
        except NotFoundError:
            self._max_request = DEFAULT_MAX_REQUEST
        return self._max_request

    async def _in_parts(self, stream: str, payloads: list[bytes], params: dict[str, int]) -> int:
        """Upload ``payloads`` as blobs of records, then publish them in one append (see
        ``asyncart/_server/_staged.py``). Parts the server cannot find (a restarted server
        forgot who uploaded them) are uploaded once more; if the first publish had landed,
        the server recognises the records."""
        if (size := packed_size(payloads)) > self._max_staged:
            raise InvalidInputError(
                f"an append of {size} bytes of records is larger than the server at "
                f"{self._client.url} takes (at most {self._max_staged}: its "
                "--max-staged-bytes); nothing was stored"
            )
        parts = split_records(payloads, STAGED_PART, self._max_staged)
        for attempt in range(2):
            named = await self._upload(parts)
            body = pack({"parts": named})
            reply = await self._client.request(
                "POST",
                _log(stream),
                params=params,
                body=lambda: body,  # noqa: B023 - sent within this iteration
                headers={"Content-Type": MSGPACK},
                ok=(200, 400, 409),
            )
            if reply.status != 400:
                return await self._appended(stream, payloads, params["expected_seq"], reply)
            if attempt or error_detail(reply.body).get("error") != "parts_missing":
                raise_for(reply.status, reply.body, self._client.url)
        raise AssertionError("unreachable")

    async def _upload(self, parts: list[list[bytes]]) -> list[tuple[str, int]]:
        """Upload each part as a blob (a few at once); their [digest, size] pairs, in order."""
        named: list[tuple[str, int]] = [("", 0)] * len(parts)
        limiter = anyio.CapacityLimiter(_PARTS_AT_ONCE)

        async def one(index: int) -> None:
            async with limiter:  # packed only here: a few packed parts in memory at once
                data = await maybe_thread(True, pack, parts[index])
                named[index] = (await self._blobs.put_bytes(data), len(data))

        try:
            async with anyio.create_task_group() as group:
                for index in range(len(parts)):
                    group.start_soon(one, index)
        except BaseExceptionGroup as errors:
            raise _first_error(errors) from None  # callers expect our errors, not a group
        return named

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
                f"a record of {len(payload)} bytes is larger than the server takes (at most "
                f"{limit} bytes; HTTP 413); nothing was stored"
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
        self.blobs = HttpBlobStore(self._client, part_size, part_threshold)
        self.log = HttpEventLog(self._client, self.blobs)

    def held(self) -> AbstractAsyncContextManager[object]:
        """Keep the connection pool open for the block (re-entrant)."""
        return self._client.held()

    async def epoch(self) -> int | None:
        """The server's store's collection epoch (see :class:`~asyncart._backends.base.Swept`;
        None: its store is never swept, or the server is older than the collector)."""
        reply = await self._client.request("GET", "/blobs/epoch", ok=(200, 404))
        if reply.status == 404:
            return None
        epoch: int | None = unpack(reply.body)["epoch"]
        return epoch

    async def collect(
        self,
        grace: float,
        dry_run: bool,
        now: float | None,
        draft_ttl: float | None,
        project: str | None = None,
    ) -> dict[str, Any]:
        """Have the server collect its store's garbage (an admin token); its report."""
        fields: dict[str, Any] = {"grace": grace, "dry_run": dry_run, "draft_ttl": draft_ttl}
        # sent only when set: an older server refuses a field it does not know
        optional = {"now": now, "project": project}
        body = pack({**fields, **{k: v for k, v in optional.items() if v is not None}})
        reply = await self._client.request(
            "POST", "/gc", body=lambda: body, headers={"Content-Type": MSGPACK}
        )
        report: dict[str, Any] = unpack(reply.body)
        return report

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
