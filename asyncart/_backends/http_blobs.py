"""The HTTP blob store: concurrent streamed uploads (large files in resumable parts) and
downloads streamed to disk, verified and resumed with ``Range`` after a dropped connection.

File I/O and hashing run in worker threads; the event loop only moves bytes between the
socket and bounded buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, BinaryIO, TypeVar

import aiohttp
import anyio
import anyio.abc
import anyio.to_thread
import blake3

from .._errors import (
    AsyncartError,
    BackendUnavailableError,
    FileChangedError,
    IntegrityError,
    NotFoundError,
)
from .._threads import maybe_thread
from ._http_client import TRANSIENT, HttpClient, Reply, ServerError, error_detail, unavailable
from ._wire import MSGPACK, unpack
from ._wire import pack as _pack
from .base import UploadItem
from .fileio import open_regular, temp_beside, why_unreadable

PART_THRESHOLD = 128 << 20
"""Files at least this large are uploaded in parts, in parallel, resumably."""
PART_SIZE = 64 << 20
"""Fewer, larger parts measured faster on loopback than 16 MiB ones (fewer streams competing
for the cores: bench/bench_http.py); a dropped connection costs at most one part."""
DIRECT_THRESHOLD = 32 << 20
"""Files at least this large go by presigned URL, straight to S3, when the server offers it
(one upload in parts: the server verifies them before they become a blob)."""
MISSING_BATCH = 10_000  # digests per `missing` request
BATCH_BYTES = 8 << 20  # small files travel together in requests of up to this many bytes ...
BATCH_FILES = 1000  # ... or this many files
FILES_AT_ONCE = 8  # concurrent requests per put_files/get_files call
_CHUNK = 4 << 20  # bytes read from disk, or gathered from the socket, per thread hop
_SMALL = 1 << 20  # files up to this size are read whole before sending
_Batch = list[bytes]  # chunks as they arrived: joining them would copy every byte on the loop
_OCTETS = {"Content-Type": "application/octet-stream"}

T = TypeVar("T")


def _missing_bodies(sizes: Mapping[str, int]) -> list[bytes]:
    """The bodies of the ``missing`` requests for ``sizes``: [digest, size] pairs, in batches."""
    pairs = [[digest, size] for digest, size in sizes.items()]
    return [_pack(pairs[i : i + MISSING_BATCH]) for i in range(0, len(pairs), MISSING_BATCH)]


class HttpBlobStore:
    """A :class:`~asyncart._backends.base.BlobStore` on a server."""

    def __init__(
        self, client: HttpClient, part_size: int = PART_SIZE, part_threshold: int = PART_THRESHOLD
    ) -> None:
        self._client = client
        self.part_size, self.part_threshold = part_size, part_threshold
        self._presign = True  # until the server says it has no presigned URLs

    async def missing(self, sizes: Mapping[str, int]) -> set[str]:
        bodies = await maybe_thread(len(sizes) > MISSING_BATCH, _missing_bodies, sizes)
        out: set[str] = set()
        for body in bodies:
            reply = await self._client.request(
                "POST", "/blobs/missing", body=_const(body), headers={"Content-Type": MSGPACK}
            )
            out.update(unpack(reply.body))
        return out

    async def put_files(self, items: Sequence[UploadItem]) -> int:
        small = [item for item in items if item.size <= _SMALL]
        jobs: list[Callable[[], Awaitable[int]]] = [
            functools.partial(self._put_batch, group) for group in _groups(small)
        ]
        jobs += [functools.partial(self._put_file, i) for i in items if i.size > _SMALL]
        return sum(await _gather(jobs, _call))

    async def _put_batch(self, items: list[UploadItem]) -> int:
        """Small files in one request: read together in one thread hop, verified by the server.

        A server whose request limit (``--max-request-bytes``) is below the batch's size
        answers 413: the batch is then sent in halves, and a lone file on its own."""
        body = await anyio.to_thread.run_sync(_pack_files, items)
        reply = await self._client.request(
            "POST",
            "/blobs/batch",
            body=_const(body),
            headers={"Content-Type": MSGPACK},
            ok=(201, 413, 422),
        )
        if reply.status == 413:
            if len(items) == 1:
                return await self._put_file(items[0])
            half = len(items) // 2
            return await self._put_batch(items[:half]) + await self._put_batch(items[half:])
        if reply.status == 422:
            bad = set(error_detail(reply.body).get("bad", ()))
            raise _changed(next(i for i in items if i.digest in bad), "its bytes hash otherwise")
        return sum(item.size for item in items)

    async def _put_file(self, item: UploadItem) -> int:
        """One file over 1 MiB: streamed in one request, or in parts when it is large, or
        large enough to go by presigned URL (until the server shows it does not presign).

        Smaller files go by one PUT: by URL they measured slower for no less server CPU, as
        the server reads each blob back from S3 to verify it; at the threshold the URL was as
        fast for much less server CPU."""
        if item.size >= self.part_threshold or (self._presign and item.size >= DIRECT_THRESHOLD):
            return await self._put_parts(item)
        reply = await self._client.request(
            "PUT",
            f"/blobs/{item.digest}",
            body=lambda: _file_chunks(item, 0, item.size),
            headers={**_OCTETS, "Content-Length": str(item.size)},
            ok=(201, 422),
        )
        _check_stored(item, reply)
        return item.size

    async def _put_parts(self, item: UploadItem) -> int:
        """Upload the file in parts into an upload of its own, then join them.

        A server on S3 chooses the part size and may hand out a presigned URL per part: the
        parts then go straight to S3 (a part whose URL fails with 403, as when it expired, goes
        through the server). The server keeps finished parts: after a dropped connection only
        the parts it lacks are sent again. If it expired the upload meanwhile, a second one
        starts afresh.
        """
        size = {"size": item.size}
        async with _direct() as direct:
            for _ in range(2):  # a second upload if the server expired the first one meanwhile
                started = await self._client.request(
                    "POST", f"/uploads/{item.digest}", params={**size, "part_size": self.part_size}
                )
                answer = unpack(started.body)
                where = f"/uploads/{item.digest}/{answer['upload']}"
                part = max(1, int(answer.get("part_size", self.part_size)))
                urls: list[str] = answer.get("urls") or []
                self._presign = "urls" in answer
                put = functools.partial(self._put_part, item, where, part, urls, direct)
                try:
                    await _gather(range(-(-item.size // part)), put)
                except NotFoundError:  # the upload expired under its parts
                    reply = None
                else:
                    reply = await self._client.request(
                        "POST", f"{where}/complete", params=size, ok=(201, 400, 422)
                    )
                    if reply.status != 400:
                        _check_stored(item, reply)
                        return item.size
                if not await self.missing({item.digest: item.size}):  # another client stored it
                    return item.size
        why = error_detail(reply.body)["message"] if reply is not None else "upload gone"
        raise BackendUnavailableError(
            f"the server at {self._client.url} lost the parts of {item.source} twice while "
            f"they were uploaded ({why}); retry"
        )

    async def _put_part(
        self,
        item: UploadItem,
        where: str,
        part: int,
        urls: list[str],
        direct: aiohttp.ClientSession,
        index: int,
    ) -> int:
        """Send part ``index`` (to its presigned URL when there is one, else to the server)."""
        start = index * part
        length = min(part, item.size - start)
        body = functools.partial(_file_chunks, item, start, length)
        if index < len(urls) and await self._put_direct(direct, urls[index], body, length):
            return length
        size = {"size": item.size}

        async def arrived() -> bool:  # after a dropped connection: did it land anyway?
            listing = await self._client.request("GET", where, params=size)
            return bool(unpack(listing.body).get(index) == length)

        await self._client.request(
            "PUT",
            f"{where}/{index}",
            params={**size, "offset": start},
            body=body,
            headers={**_OCTETS, "Content-Length": str(length)},
            done=arrived,
        )
        return length

    async def _put_direct(
        self, direct: aiohttp.ClientSession, url: str, body: Callable[[], Any], length: int
    ) -> bool:
        """PUT a part to a presigned URL, retrying as the server's requests are; False when
        S3 refuses the URL (403: expired), for the caller to send the part another way."""
        policy = self._client.retry
        for attempt in range(policy.attempts):
            try:
                async with direct.put(
                    url, data=body(), headers={"Content-Length": str(length)}
                ) as response:
                    text = await response.text(errors="replace")
                    if response.status == 200:
                        return True
                    if response.status == 403:
                        return False
                    if response.status < 500 and response.status != 429:
                        raise BackendUnavailableError(
                            f"S3 at {_where(url)} refused a part ({response.status}: "
                            f"{_s3_code(text)})"
                        )
                    raise ServerError(response.status, _s3_code(text))
            except (*TRANSIENT, ServerError) as e:
                if isinstance(e.__cause__, AsyncartError):  # the file failed, not the network
                    raise e.__cause__ from None
                if attempt + 1 == policy.attempts:
                    raise BackendUnavailableError(
                        f"S3 at {_where(url)} failed a part {attempt + 1} times "
                        f"({str(e) or type(e).__name__}); check that this machine can reach it "
                        "(if it cannot, the server must run with --no-presign)"
                    ) from e
                await asyncio.sleep(policy.delay(attempt))
        raise AssertionError("unreachable")

    async def put_bytes(self, data: bytes) -> str:
        digest = await _hash(data)
        await self._client.request(
            "PUT",
            f"/blobs/{digest}",
            body=lambda: data,
            headers={**_OCTETS, "Content-Length": str(len(data))},
        )
        return digest

    async def get_bytes(self, digest: str) -> bytes:
        data = (await self._client.request("GET", f"/blobs/{digest}")).body
        _verify(digest, await _hash(data))
        return data

    async def get_files(self, items: Sequence[tuple[str, str]]) -> int:
        if len(items) < 2:
            small: list[tuple[str, str, bytes]] = []
            large = list(items)
        else:
            digests = sorted({digest for digest, _ in items})
            reply = await self._client.request(
                "POST",
                "/blobs/fetch",
                body=_const(_pack(digests)),
                headers={"Content-Type": MSGPACK},
            )
            fetched = dict(zip(digests, unpack(reply.body), strict=True))
            small = [(d, dest, fetched[d]) for d, dest in items if fetched[d] is not None]
            large = [(d, dest) for d, dest in items if fetched[d] is None]  # one by one
        written = await anyio.to_thread.run_sync(_write_verified, small)
        urls = await self._urls(sorted({d for d, _ in large}))
        async with _direct() as direct:

            async def one(pair: tuple[str, str]) -> int:
                return await self._get_file(pair[0], pair[1], urls.get(pair[0]), direct)

            return written + sum(await _gather(large, one))

    async def _urls(self, digests: list[str]) -> dict[str, str | None]:
        """Presigned URLs of ``digests`` from a server on S3 ({} from one that has none: it is
        not asked again)."""
        found: dict[str, str | None] = {}
        for i in range(0, len(digests) if self._presign else 0, MISSING_BATCH):
            reply = await self._client.request(
                "POST",
                "/blobs/urls",
                body=_const(_pack(digests[i : i + MISSING_BATCH])),
                headers={"Content-Type": MSGPACK},
            )
            answer = unpack(reply.body)
            self._presign = bool(answer["presign"])
            found.update(answer["urls"])
        return found

    async def _get_file(
        self,
        digest: str,
        dest: str,
        url: str | None = None,
        direct: aiohttp.ClientSession | None = None,
    ) -> int:
        """Stream one blob to ``dest`` through a temp file; resume with ``Range`` on errors."""
        sink = _Sink(temp_beside(dest))
        try:
            await sink.fill(lambda send: self._receive(digest, send, url, direct))
            return await anyio.to_thread.run_sync(sink.finish, digest, dest)
        except BaseException:
            await anyio.to_thread.run_sync(sink.discard)
            raise

    async def _receive(
        self,
        digest: str,
        send: anyio.abc.ObjectSendStream[_Batch],
        url: str | None = None,
        direct: aiohttp.ClientSession | None = None,
    ) -> None:
        """Send the blob's bytes to ``send`` in order, resuming where a dropped body stopped
        (from its presigned ``url`` while S3 takes it, then through the server)."""
        received = 0
        policy = self._client.retry
        for attempt in range(policy.attempts):
            pending: _Batch = []
            batched = 0
            try:
                range_ = {"Range": f"bytes={received}-"} if received else None
                if url is not None and direct is not None:
                    opened = _get_direct(direct, url, digest, range_)
                else:
                    opened = self._client.stream(f"/blobs/{digest}", range_)
                async with opened as response:
                    if response is None:  # the URL expired: through the server from here on
                        url = None
                        raise ServerError(403, "the presigned URL expired")
                    if received and response.status != 206:
                        raise BackendUnavailableError(
                            f"the server at {self._client.url} ignored a Range request"
                        )
                    async for chunk in response.content.iter_any():
                        pending.append(chunk)
                        batched += len(chunk)
                        if batched >= _CHUNK:
                            await send.send(pending)
                            received, pending, batched = received + batched, [], 0
                await send.send(pending)
                received += batched
                return
            except (*TRANSIENT, ServerError) as e:
                if pending:  # what did arrive is good: keep it, ask only for the rest
                    await send.send(pending)
                    received += batched
                if attempt + 1 == policy.attempts:
                    raise unavailable(self._client.url, e, attempt + 1) from e
                await asyncio.sleep(policy.delay(attempt))

    async def flush(self) -> None:
        await self._client.request("POST", "/blobs/flush")


@contextlib.asynccontextmanager
async def _direct() -> AsyncIterator[aiohttp.ClientSession]:
    """A session for presigned S3 URLs: none of the server's headers (its token stays with
    it), bodies as they are."""
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120),
        auto_decompress=False,
    ) as session:
        yield session


@contextlib.asynccontextmanager
async def _get_direct(
    session: aiohttp.ClientSession, url: str, digest: str, headers: dict[str, str] | None
) -> AsyncIterator[aiohttp.ClientResponse | None]:
    """GET a presigned URL; None when S3 refuses it (403: expired)."""
    async with session.get(url, headers=headers) as response:
        if response.status in (200, 206):
            yield response
            return
        text = await response.text(errors="replace")
        if response.status == 403:
            yield None
            return
        if response.status == 404:
            raise NotFoundError(f"blob {digest} is missing from the store at {_where(url)}")
        if response.status >= 500 or response.status == 429:
            raise ServerError(response.status, _s3_code(text))
        raise BackendUnavailableError(
            f"S3 at {_where(url)} refused a download ({response.status}: {_s3_code(text)})"
        )


def _where(url: str) -> str:
    """A presigned URL without its query (the signature is a credential: never shown)."""
    return url.split("?", 1)[0]


def _s3_code(text: str) -> str:
    start, end = text.find("<Code>"), text.find("</Code>")
    return text[start + 6 : end] if 0 <= start < end else text[:100]


class _Sink:
    """A temp file being written and hashed (its methods block: call them in a thread)."""

    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self.file: BinaryIO | None = None  # opened by the first write: a 404 leaves no file
        self.hasher = blake3.blake3()  # one core hashes at several GB/s: far above the network
        self.size = 0

    def write(self, batch: _Batch) -> None:
        if self.file is None:
            self.file = open(self.tmp, "xb", buffering=0)  # noqa: SIM115 - closed in finish
        for data in batch:
            self.hasher.update(data)
            view = memoryview(data)
            while view:
                view = view[self.file.write(view) :]
            self.size += len(data)

    async def fill(
        self, receive: Callable[[anyio.abc.ObjectSendStream[_Batch]], Awaitable[None]]
    ) -> None:
        """Write (and hash) the batches that ``receive`` sends, each in a worker thread while
        the next one arrives: receiving and writing overlap. Raises ``receive``'s error, not
        a group of them."""
        send, batches = anyio.create_memory_object_stream[_Batch](1)

        async def writer() -> None:
            async with batches:
                async for batch in batches:
                    await anyio.to_thread.run_sync(self.write, batch)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(writer)
                async with send:
                    await receive(send)
        except BaseExceptionGroup as group:
            raise _first_error(group) from None

    def write_all(self, data: bytes, digest: str, dest: str) -> int:
        """:meth:`write` then :meth:`finish`: a small blob in one thread hop."""
        self.write([data])
        return self.finish(digest, dest)

    def finish(self, digest: str, dest: str) -> int:
        self.write([])  # an empty blob still makes a file
        assert self.file is not None
        self.file.close()
        _verify(digest, self.hasher.hexdigest())
        os.replace(self.tmp, dest)
        return self.size

    def discard(self) -> None:
        if self.file is not None:
            self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


def _groups(items: list[UploadItem]) -> list[list[UploadItem]]:
    """Cut small files into request-sized groups (the server's body limit is 64 MiB)."""
    groups: list[list[UploadItem]] = [[]]
    size = 0
    for item in items:
        if groups[-1] and (size + item.size > BATCH_BYTES or len(groups[-1]) >= BATCH_FILES):
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += item.size
    return groups if groups[0] else []


def _pack_files(items: list[UploadItem]) -> bytes:
    """The msgpack body of a batch upload (blocking: reads the files)."""
    pairs = []
    for item in items:
        try:
            data = _read(item.source, 0, item.size + 1)
        except OSError as e:  # deleted, now a directory or FIFO ... since add_file
            raise _changed(item, why_unreadable(e)) from None
        if len(data) != item.size:
            raise _changed(item, f"it now has {len(data)} bytes")
        pairs.append([item.digest, data])
    return _pack(pairs)


def _write_verified(blobs: list[tuple[str, str, bytes]]) -> int:
    """Write fetched blobs to their destinations through temp files, verified (blocking)."""
    written = 0
    for digest, dest, data in blobs:
        _verify(digest, blake3.blake3(data).hexdigest())
        tmp = temp_beside(dest)
        with open(tmp, "xb", buffering=0) as f:
            f.write(data)
        os.replace(tmp, dest)
        written += len(data)
    return written


async def _call(job: Callable[[], Awaitable[int]]) -> int:
    return await job()


def _const(data: bytes) -> Callable[[], bytes]:
    return lambda: data


async def _gather(items: Sequence[T] | range, run: Callable[[T], Awaitable[int]]) -> list[int]:
    """``run`` over every item, at most FILES_AT_ONCE at a time; results in input order."""
    results = [0] * len(items)
    limit = anyio.Semaphore(FILES_AT_ONCE)

    async def one(index: int, item: T) -> None:
        async with limit:
            results[index] = await run(item)

    try:
        async with anyio.create_task_group() as tg:
            for index, item in enumerate(items):
                tg.start_soon(one, index, item)  # type: ignore[arg-type]
    except BaseExceptionGroup as group:
        raise _first_error(group) from None  # callers expect our errors, not a group of them
    return results


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first error of a task group that is not a cancellation (those come from it)."""
    cancelled = anyio.get_cancelled_exc_class()
    leaves = _leaves(group)
    return next((e for e in leaves if not isinstance(e, cancelled)), leaves[0])


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


async def _file_chunks(item: UploadItem, start: int, length: int) -> AsyncIterator[bytes]:
    """``length`` bytes of a file from ``start``, read in a worker thread chunk by chunk."""
    end = start + length
    while start < end:
        try:
            data = await anyio.to_thread.run_sync(
                _read, item.source, start, min(_CHUNK, end - start)
            )
        except OSError as e:  # raised as is, aiohttp would call it a connection error
            raise _changed(item, f"it can no longer be read: {why_unreadable(e)}") from e
        if not data:  # a short body would leave the server waiting for the rest
            raise _changed(item, f"it ends at byte {start}, before the {end} bytes expected")
        yield data
        start += len(data)


def _read(path: str, offset: int, limit: int) -> bytes:
    with open(open_regular(path), "rb", buffering=0) as f:  # never blocks on a FIFO
        return os.pread(f.fileno(), limit, offset)


async def _hash(data: bytes) -> str:
    if len(data) > _SMALL:
        return await anyio.to_thread.run_sync(lambda: blake3.blake3(data).hexdigest())
    return blake3.blake3(data).hexdigest()


def _verify(expected: str, got: str) -> None:
    if got != expected:
        raise IntegrityError(f"blob {expected} arrived corrupt: its bytes hash to {got}")


def _check_stored(item: UploadItem, reply: Reply) -> None:
    if reply.status == 201:
        return
    raise _changed(item, error_detail(reply.body)["message"])


def _changed(item: UploadItem, why: str) -> FileChangedError:
    return FileChangedError(
        f"{item.source} changed after it was added: expected {item.size} bytes with digest "
        f"{item.digest[:16]}... ({why}); add it again"
    )
