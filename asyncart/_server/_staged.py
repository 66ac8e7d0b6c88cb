"""Appends too large for one request: the records arrive as blobs, then one publish appends
them with one atomic ``EventLog.append``.

    PUT  /v1/blobs/{digest}  [bytes, ...]                         (any part: an ordinary blob)
    POST /v1/log/{stream}?expected_seq=N  {"parts": [[digest, size], ...]} -> {"head": n}

Each part is a msgpack list of records, uploaded through the blob routes like any blob (so
verified, content-addressed, and noted as the uploading token's in ``_seen.py``). The publish
names the parts in order; the server checks that the token may see each of them (it uploaded
them, shared by every replica of a PostgreSQL + S3 store) and that they add up to at most
``max_staged`` bytes; then it fetches and decodes them a few at a time, in order, and
validates the records as any append (``Streams.append``: chain, events, blob scope, stamps,
a part at a time; then the fold), appending them in one call once every part checked out: a
refused or conflicting publish stores nothing, and a part not stored at the size named is
refused when its turn comes.

The server keeps nothing between the uploads and the publish, so any replica can take any of
the requests, and a restarted one loses nothing. A publish sent again (its reply was lost) is
answered by ``Streams._landed``, which recognises records that already landed. A part the
server cannot find at the size named, or that the token may not see, is refused alike
(``parts_missing``: a token learns nothing of another's blobs); the client uploads its parts
again once.

The parts stay in the blob store after the publish, referenced by nothing; collecting
unreferenced blobs is the garbage collector's work (a later issue).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections import deque
from collections.abc import AsyncGenerator

import anyio
import blake3
import msgspec
from aiohttp import web

from .._backends._wire import Published, Records
from .._backends.base import BlobPaths
from .._errors import IntegrityError, NotFoundError
from ._blob_routes import LIMITS, SPOOL, STORE, _s3
from ._http import BODIES, SMALL_BODY, HttpError, grant_of
from ._scope import SCOPE

AHEAD = 1
"""Parts fetched from the blob store ahead of the one being validated (so the server holds
the records of a few parts at once, not the whole append's): validating a part takes longer
than fetching one."""
_RECORDS = msgspec.msgpack.Decoder(Records)


async def records_of(request: web.Request, body: Published) -> AsyncGenerator[list[bytes]]:
    """The records of the parts that ``body`` names, for the request's token: each part's
    records in turn (fetched while the parts before it are validated, ``AHEAD`` at most).

    Whether the token may see every part, and their total size, are checked here, before
    any is fetched; a part that is not stored at the size named, or is not a list of
    records, is refused when its turn comes (an append is validated part by part, and
    nothing is stored before all are: a refusal then stores nothing either).

    Raises:
        HttpError: 413 past ``max_staged`` bytes, 400 ``parts_missing`` for a part that is
            not stored (at the size named) or that the token may not see, 400 for a part that
            is not a list of records, 503 while the server holds too many bodies.
    """
    sizes = dict(body.parts)
    if any(sizes[digest] != size for digest, size in body.parts):
        raise HttpError(400, "invalid", "the publish names a part twice with two sizes")
    total = sum(size for _, size in body.parts)
    if total > (limit := request.app[LIMITS].max_staged):
        raise HttpError(
            413,
            "too_large",
            f"this append's {total} bytes of records exceed the server's {limit} byte limit "
            "(--max-staged-bytes)",
        )
    grant = await grant_of(request)
    # Not the store's `missing`: it hashes a stored blob of another size (a part named at a
    # wrong size would make the server hash, on S3 download, a large blob for nothing). A part
    # that is absent or of another size is found by `_fetch_one`, before its bytes are read.
    if unseen := await request.app[SCOPE].unseen(grant, {bytes.fromhex(d) for d in sizes}):
        raise _missing({raw.hex() for raw in unseen})
    # the records are held in memory: restamped, about as many bytes as the parts
    await request.app[BODIES].take(request, total)
    return _in_order(request, body.parts)


async def _in_order(
    request: web.Request, parts: list[tuple[str, int]]
) -> AsyncGenerator[list[bytes]]:
    """The records of each part, in order, ``AHEAD`` parts fetched ahead of the one taken
    (those are cancelled if the taker stops)."""
    fetching: deque[asyncio.Task[list[bytes]]] = deque()
    named = iter(parts)
    try:
        while True:
            while len(fetching) <= AHEAD and (part := next(named, None)) is not None:
                fetching.append(asyncio.ensure_future(_part(request, *part)))
            if not fetching:
                return
            records = await fetching.popleft()
            yield records
            del records
    finally:
        for task in fetching:
            task.cancel()
        if fetching:
            await asyncio.gather(*fetching, return_exceptions=True)


async def _part(request: web.Request, digest: str, size: int) -> list[bytes]:
    """The records of one part (verified by the store); its bytes are dropped once decoded."""
    data = await _fetch_one(request, digest, size)
    if data is None:
        raise _missing({digest})
    records = await _decoded(data)
    if records is None:
        raise HttpError(
            400, "invalid", f"part {digest} of the publish is not a msgpack list of records"
        )
    return records


async def _fetch_one(request: web.Request, digest: str, size: int) -> bytes | None:
    """The blob, if it is ``size`` bytes (None if it is gone, or of another size). Its size
    is known before it is read into memory: ``missing`` counts a good blob of another size as
    present, and a part that claims a few bytes must not load a large blob."""
    blobs = request.app[STORE].blobs
    try:
        if isinstance(blobs, BlobPaths):
            if await anyio.to_thread.run_sync(_size_of, blobs.path(digest)) != size:
                return None
            return await blobs.get_bytes(digest)
        if (s3 := _s3(request)) is not None:
            async with s3.reading(digest) as (stored, _, chunks):  # its size before its bytes
                if stored != size:
                    return None
                data = b"".join([chunk async for chunk in chunks])
            got = await anyio.to_thread.run_sync(lambda: blake3.blake3(data).hexdigest())
            if got != digest:
                raise IntegrityError(f"blob {digest} is damaged in the store: it hashes to {got}")
            return data
        spool = str(request.app[SPOOL] / f"{digest}.{secrets.token_hex(6)}.part")
        try:
            if await blobs.get_files([(digest, spool)]) != size:
                return None
            return await anyio.to_thread.run_sync(_read, spool)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_unlink, spool)
    except NotFoundError:  # removed since `missing` said it was there
        return None


def _size_of(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return -1


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def _decoded(data: bytes) -> list[bytes] | None:
    """The records of a part; None if it is not a msgpack list of records."""
    try:
        if len(data) <= SMALL_BODY:
            return _RECORDS.decode(data)
        return await anyio.to_thread.run_sync(_RECORDS.decode, data)
    except msgspec.DecodeError:  # ValidationError included
        return None


def _missing(digests: set[str]) -> HttpError:
    return HttpError(
        400,
        "parts_missing",
        f"the publish names {len(digests)} parts that are not stored or that this token did "
        f"not upload, such as {min(digests)}: upload the parts, then publish again",
    )
