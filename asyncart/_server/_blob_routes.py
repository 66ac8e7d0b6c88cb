"""Blob routes: which digests are missing, streamed upload (whole or in parts), download.

Blobs are content-addressed and stored once for every project (that is where dedup comes from),
but a token sees only the blobs its projects reference or that it uploaded (``_scope.py``): to
any other token a blob is missing. Any token that may write somewhere may upload blobs.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import anyio.lowlevel
import anyio.to_thread
import blake3
import msgspec
from aiohttp import web

from .._backends._wire import DIGEST, SIZED_BYTES, Batch, Digests, Sized
from .._backends.base import BlobPaths, BlobStore, Store, UploadItem
from .._errors import NotFoundError
from ._http import (
    HttpError,
    grant_of,
    int_query,
    msgpack_body,
    msgpack_response,
    next_chunk,
    require,
)
from ._scope import hidden, uploaded
from ._spool import hash_file, receive, receive_at
from ._uploads import UPLOADS

if TYPE_CHECKING:  # imported only by a server on S3: a local server need not load botocore
    from .._backends.s3_blobs import S3BlobStore


@dataclass(frozen=True)
class Limits:
    """Request size limits."""

    max_blob: int = 1 << 40
    """Bytes of one blob (whole or the sum of its parts)."""
    max_part: int = 1 << 30
    """Bytes of one part of a multipart upload."""
    max_parts: int = 10_000
    """Parts of one multipart upload."""
    max_request: int = 64 << 20
    """Bytes of any request body the server buffers: a batch of small blobs (clients send up
    to 8 MiB), a log append, a digest list."""
    page_bytes: int = 8 << 20
    """About how many record bytes one log page carries."""
    max_staged: int = 512 << 20
    """Bytes of records in one append published from parts (an append too large for one
    request is uploaded in blobs, then published at once): so the largest append, which the
    server holds in memory to validate it."""
    max_in_flight: int = 256 << 20
    """Bytes of buffered request bodies held at once, by all requests together (the rest wait)."""
    idle_timeout: float = 30.0
    """Seconds a connection may take to send a whole request header (from when it opens, or
    from its last response), or pause in a body, before it is dropped."""
    max_connections: int = 1024
    """Open connections; past it the longest-open idle one is closed (at most the process's
    file limit less a reserve for files)."""


BATCH_BYTES = 16 << 20  # at most this much in one /blobs/fetch response
SMALL_BLOB = 1 << 20  # larger blobs are left out of a batch response

# typed decoders: a body of another shape fails at its first wrong value, before it is built
_MISSING = msgspec.msgpack.Decoder(Sized)
_DIGESTS = msgspec.msgpack.Decoder(Digests)
_BATCH = msgspec.msgpack.Decoder(Batch)

STORE = web.AppKey("store", Store)
_OCTETS = "application/octet-stream"
SPOOL = web.AppKey("spool", Path)
LIMITS = web.AppKey("limits", Limits)
PRESIGN = web.AppKey("presign", bool)
"""False: a server on S3 relays blob bytes itself (``--no-presign``: for S3 endpoints its
clients cannot reach); true or unset: it hands out presigned URLs for large blobs."""


def _digest(request: web.Request) -> str:
    digest = request.match_info["digest"]
    if not DIGEST.fullmatch(digest):
        raise HttpError(400, "invalid", f"{digest!r} is not a BLAKE3 hex digest")
    return digest


async def missing(request: web.Request) -> web.Response:
    """POST /v1/blobs/missing [[digest, size], ...]: the digests the store lacks, or holds
    with another size (the store moves such a damaged file aside)."""
    await grant_of(request)
    pairs = await msgpack_body(request, _MISSING, SIZED_BYTES)
    sizes = dict(pairs)
    # Visibility first: a blob the token may not see is missing to it, and the store is not
    # asked about it (no timing to learn from, no hashing of a blob claimed at a wrong size).
    invisible = await hidden(request, sizes)
    visible = {d: size for d, size in sizes.items() if d not in invisible}
    absent = invisible | await request.app[STORE].blobs.missing(visible)
    return msgpack_response(sorted(absent))


async def upload(request: web.Request) -> web.Response:
    """PUT /v1/blobs/{digest}: store the body if it hashes to ``digest``, else store nothing."""
    require((await grant_of(request)).writes_somewhere, "upload blobs")
    digest = _digest(request)
    spool = str(request.app[SPOOL] / f"{digest}.{secrets.token_hex(6)}.body")
    try:
        got, size = await receive(request, spool, request.app[LIMITS].max_blob)
        await _store(request.app[STORE], spool, digest, got, size)
        await uploaded(request, [digest])
    finally:
        await anyio.to_thread.run_sync(_unlink, spool)
    return msgpack_response({"size": size}, 201)


async def _store(store: Store, spool: str, digest: str, got: str, size: int) -> None:
    """Hand a verified spool file (written by nobody any more) to the store: linked in, with
    no copy, when blobs are files; a good blob already stored is never replaced."""
    if got != digest:
        raise HttpError(
            422,
            "digest_mismatch",
            f"the body ({size} bytes) hashes to {got}, not {digest}; nothing was stored",
            got=got,
        )
    if isinstance(store.blobs, BlobPaths):  # same filesystem: no second copy, no second hash
        await anyio.to_thread.run_sync(store.blobs.adopt, spool, digest, size)
    else:
        await store.blobs.put_files([UploadItem(spool, digest, size)])


async def upload_batch(request: web.Request) -> web.Response:
    """POST /v1/blobs/batch [[digest, bytes], ...]: many small blobs in one request.

    Every blob is verified before any is stored: one wrong digest refuses the whole batch.
    """
    require((await grant_of(request)).writes_somewhere, "upload blobs")
    pairs = await msgpack_body(request, _BATCH)
    bad = await anyio.to_thread.run_sync(_mismatches, pairs)
    if bad:
        raise HttpError(
            422,
            "digest_mismatch",
            f"{len(bad)} blobs do not hash to their digest: {bad[0]}; nothing was stored",
            bad=bad,
        )
    spool, blobs = request.app[SPOOL], request.app[STORE].blobs
    files = await anyio.to_thread.run_sync(_spool_all, spool, pairs)
    try:
        if isinstance(blobs, BlobPaths):
            await anyio.to_thread.run_sync(_adopt_all, blobs, files, pairs)
        else:
            items = [UploadItem(f, d, len(b)) for f, (d, b) in zip(files, pairs, strict=True)]
            await blobs.put_files(items)
    finally:
        await anyio.to_thread.run_sync(_unlink_all, files)
    await uploaded(request, [digest for digest, _ in pairs])
    return msgpack_response({"size": sum(len(b) for _, b in pairs)}, 201)


def _adopt_all(blobs: BlobPaths, files: list[str], pairs: Batch) -> None:
    for spool, (digest, data) in zip(files, pairs, strict=True):
        blobs.adopt(spool, digest, len(data))


def _unlink_all(files: list[str]) -> None:
    for path in files:
        _unlink(path)


def _mismatches(pairs: Batch) -> list[str]:
    return [d for d, data in pairs if blake3.blake3(data).hexdigest() != d]


def _spool_all(spool: Path, pairs: Batch) -> list[str]:
    """Write each blob to a new spool file; on any failure (a full disk) remove them all."""
    files: list[str] = []
    try:
        for digest, data in pairs:
            files.append(str(spool / f"{digest}.{secrets.token_hex(6)}.body"))
            with open(files[-1], "xb", buffering=0) as f:
                view = memoryview(data)
                while view:  # a short write (the disk filled up) is retried, and then raises
                    view = view[f.write(view) :]
    except BaseException:
        _unlink_all(files)
        raise
    return files


async def download_batch(request: web.Request) -> web.Response:
    """POST /v1/blobs/fetch [digest, ...]: small blobs in one response; ``None`` for a blob
    too large for a batch (GET it alone). The client verifies every one."""
    await grant_of(request)
    digests = await msgpack_body(request, _DIGESTS)
    blobs = request.app[STORE].blobs
    if invisible := await hidden(request, digests):
        raise _not_found(min(invisible))
    if isinstance(blobs, BlobPaths):
        found = await anyio.to_thread.run_sync(_read_small, blobs, digests)
    elif (s3 := _s3(request)) is not None:
        found = await _read_small_s3(s3, digests)
    else:
        found = [await _get_bytes(blobs, d) for d in digests]
    return msgpack_response(found)


def _not_found(digest: str) -> HttpError:
    return HttpError(404, "not_found", f"blob {digest} is missing from the store")


async def _get_bytes(blobs: BlobStore, digest: str) -> bytes:
    try:
        return await blobs.get_bytes(digest)
    except NotFoundError:
        raise _not_found(digest) from None


def _read_small(blobs: BlobPaths, digests: list[str]) -> list[bytes | None]:
    out: list[bytes | None] = []
    budget = BATCH_BYTES
    for digest in digests:
        try:
            f = open(blobs.path(digest), "rb", buffering=0)  # noqa: SIM115 - closed just below
        except FileNotFoundError:
            raise _not_found(digest) from None
        with f:
            size = os.fstat(f.fileno()).st_size
            if size > min(budget, SMALL_BLOB):
                out.append(None)
                continue
            out.append(f.read())
            budget -= size
    return out


async def download(request: web.Request) -> web.StreamResponse:
    """GET /v1/blobs/{digest}: the blob's bytes, with ``Range`` support (for resuming)."""
    await grant_of(request)
    digest = _digest(request)
    blobs = request.app[STORE].blobs
    if await hidden(request, [digest]):
        raise _not_found(digest)
    if isinstance(blobs, BlobPaths):
        path = blobs.path(digest)
        if not await anyio.to_thread.run_sync(os.path.isfile, path):
            raise _not_found(digest)
        return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})
    if (s3 := _s3(request)) is not None:
        return await _relay(request, s3, digest)
    spool = str(request.app[SPOOL] / f"{digest}.{secrets.token_hex(6)}.out")
    try:
        try:
            await blobs.get_files([(digest, spool)])  # verified by the backend
        except NotFoundError:
            raise _not_found(digest) from None
        response = web.FileResponse(spool)
        await response.prepare(request)
        await response.write_eof()
        return response
    finally:
        await anyio.to_thread.run_sync(_unlink, spool)


async def flush(request: web.Request) -> web.Response:
    """POST /v1/blobs/flush: make every stored blob durable."""
    require((await grant_of(request)).writes_somewhere, "upload blobs")
    await request.app[STORE].blobs.flush()
    return msgpack_response({})


# -- multipart uploads: each upload has its own parts, in one file, until `complete` ----------
#
# POST /uploads/DIGEST?size=N gives out an upload id (random: only its client knows it).
# spool/parts/DIGEST-SIZE-ID/data   the blob being assembled (parts pwrite at their offsets)
# spool/parts/DIGEST-SIZE-ID/N      "OFFSET LENGTH": part N arrived whole (a client resumes)
#
# A directory no request used for the upload expiry is removed (see _uploads.py): every route
# below works inside `UPLOADS.using(where)`, which keeps it while the request runs. `complete`
# seals the upload (no part request in flight, none taken later), hashes the closed file and
# links it into the store: the verified bytes are the stored bytes, and nobody can write them.

_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


def _size(request: web.Request) -> int:
    size = int_query(request, "size")
    if size > request.app[LIMITS].max_blob:
        limit = request.app[LIMITS].max_blob
        raise HttpError(413, "too_large", f"{size} bytes exceed this server's {limit} limit")
    return size


def _parts_dir(request: web.Request, digest: str) -> Path:
    """The directory of the upload named in the path (``{upload}``)."""
    upload = request.match_info["upload"]
    if not _UPLOAD_ID.fullmatch(upload):
        raise HttpError(400, "invalid", f"{upload!r} is not an upload id")
    return request.app[UPLOADS].root / f"{digest}-{_size(request)}-{upload}"


async def start_upload(request: web.Request) -> web.Response:
    """POST /v1/uploads/{digest}?size=N: a new multipart upload, as {"upload": id}."""
    require((await grant_of(request)).writes_somewhere, "upload blobs")
    digest, size = _digest(request), _size(request)
    upload = secrets.token_hex(16)
    if (s3 := _s3(request)) is not None:
        return await _start_incoming(request, s3, upload, size)
    where = request.app[UPLOADS].root / f"{digest}-{size}-{upload}"
    async with request.app[UPLOADS].using(where):
        await anyio.to_thread.run_sync(_create, where)
    return msgpack_response({"upload": upload}, 201)


def _create(where: Path) -> None:
    where.mkdir(parents=True)
    (where / "data").touch()


async def parts(request: web.Request) -> web.Response:
    """GET /v1/uploads/{digest}/{upload}?size=N: the parts received so far, as {index: size}
    ({} once the upload expired or completed)."""
    require((await grant_of(request)).writes_somewhere, "upload blobs")
    where = _parts_dir(request, _digest(request))
    if (s3 := _s3(request)) is not None:
        return msgpack_response(await _incoming_listing(s3, request.match_info["upload"]))
    async with request.app[UPLOADS].using(where):
        found = await anyio.to_thread.run_sync(_list_parts, where)
    return msgpack_response({index: length for index, (_, length) in found.items()})


def _list_parts(where: Path) -> dict[int, tuple[int, int]]:
    """index -> (offset, length) of every part that arrived whole."""
    try:
        names = [n for n in os.listdir(where) if n.isdigit()]
    except FileNotFoundError:
        return {}
    out = {}
    for name in names:
        offset, length = (where / name).read_text().split()
        out[int(name)] = (int(offset), int(length))
    return out


async def put_part(request: web.Request) -> web.Response:
    """PUT /v1/uploads/{digest}/{upload}/{index}?size=N&offset=O: one part, at its offset."""
    require((await grant_of(request)).writes_somewhere, "upload blobs")
    where = _parts_dir(request, _digest(request))
    digits, offset = request.match_info["index"], int_query(request, "offset")
    limits = request.app[LIMITS]
    if len(digits) > 9 or (index := int(digits)) >= limits.max_parts:  # (int() of 5,000 digits
        raise HttpError(413, "too_large", f"at most {limits.max_parts} parts")  # raises)
    size = int_query(request, "size")
    limit = min(limits.max_part, max(size - offset, 0))
    if (s3 := _s3(request)) is not None:
        upload = request.match_info["upload"]
        return await _relay_part(request, s3, upload, index, min(limit, _S3_PART_MAX))
    uploads = request.app[UPLOADS]
    async with uploads.using(where):
        with uploads.writing(where):
            try:
                length = await receive_at(request, str(where / "data"), offset, limit)
                await anyio.to_thread.run_sync(_mark, where, index, offset, length)
            except FileNotFoundError:
                raise HttpError(
                    404, "upload_gone", "this upload expired or was completed: start another"
                ) from None
    return msgpack_response({"size": length}, 201)


def _mark(where: Path, index: int, offset: int, length: int) -> None:
    tmp = where / f".{index}.{secrets.token_hex(4)}"
    tmp.write_text(f"{offset} {length}")
    os.replace(tmp, where / str(index))


async def complete(request: web.Request) -> web.Response:
    """POST /v1/uploads/{digest}/{upload}/complete?size=N: verify the assembled blob and store
    it (400 when parts are missing, as after an expiry; 429 while a part still arrives)."""
    require((await grant_of(request)).writes_somewhere, "upload blobs")
    digest = _digest(request)
    where = _parts_dir(request, digest)
    size = int_query(request, "size")
    uploads = request.app[UPLOADS]
    if (s3 := _s3(request)) is not None:
        await _complete_incoming(s3, request.match_info["upload"], digest, size)
    else:
        async with uploads.using(where):
            with uploads.sealed(where):
                await _complete(request.app[STORE], where, digest, size)
    await uploaded(request, [digest])
    return msgpack_response({"size": size}, 201)


async def _complete(store: Store, where: Path, digest: str, size: int) -> None:
    covered = await anyio.to_thread.run_sync(_covered, where)
    if covered != size:
        raise HttpError(400, "incomplete", f"the parts hold {covered} of {size} bytes: resend")
    data = str(where / "data")
    got, held = await anyio.to_thread.run_sync(hash_file, data)
    try:
        if held != size:  # a part past the end: the file is longer than the blob
            raise HttpError(400, "invalid", f"the parts hold {held} bytes, not {size}")
        await _store(store, data, digest, got, size)
    finally:  # stored, or wrong (the parts are bad, not missing): start over either way
        await anyio.to_thread.run_sync(shutil.rmtree, where, True)


def _covered(where: Path) -> int:
    """How many bytes from offset 0 the finished parts cover without a gap."""
    end = 0
    for offset, length in sorted(_list_parts(where).values()):
        if offset > end:
            break
        end = max(end, offset + length)
    return end


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def clean_spool(spool: Path) -> None:
    """Remove what uploads in flight left when the last server process died (blocking).

    Finished parts of multipart uploads stay: they are what a client resumes from (until they
    expire, see ``_uploads.py``).
    """
    spool.mkdir(parents=True, exist_ok=True)
    for leftover in spool.glob("*.*"):
        leftover.unlink(missing_ok=True)
    for partial in spool.glob("parts/*/.*"):  # half-written markers; data holes are harmless
        partial.unlink(missing_ok=True)


# -- on S3: uploads are S3 multipart uploads of PREFIX/incoming/ID, downloads by URL ----------
#
# The upload id names the incoming key; S3 knows the rest (its own upload id, the parts, their
# sizes and age), so any server process serves any request of an upload, and the server keeps
# nothing. The client PUTs parts to presigned UploadPart URLs (or, with --no-presign, to the
# server, which streams them on). `complete` trusts only S3: it lists the parts, joins them,
# hashes the joined object as S3 returns it while S3 copies it to the blob's key (only while
# its ETag is the one hashed), keeps the copy only if the hash is right (and never over a
# stored blob), then deletes the joined object. The parts
# of an abandoned upload, and an object a crash left between join and delete, are expired from
# S3's listings (``_uploads.py``).

PART_URL_EXPIRY = 3600
"""Seconds a presigned part URL works (a client whose URL expired sends the part through us)."""
BLOB_URL_EXPIRY = 900
"""Seconds a presigned download URL works (after that the client reads through us)."""
_S3_PART_MIN, _S3_PART_MAX, _S3_PARTS = 5 << 20, 5 << 30, 10_000  # S3's multipart bounds
_URLS_AT_ONCE = 10_000  # digests one /blobs/urls request may ask about
_S3_READS = 16  # GETs of one batch download in flight at once


def _s3(request: web.Request) -> S3BlobStore | None:
    """The store's blobs when they are in S3 (told apart without importing botocore)."""
    blobs = request.app[STORE].blobs
    return cast("S3BlobStore", blobs) if hasattr(blobs, "incoming_key") else None


def _presigning(request: web.Request) -> bool:
    return request.app.get(PRESIGN, True)


def part_size(size: int, wanted: int) -> int:
    """The part size of an S3 upload of ``size`` bytes: the client's wish, within S3's bounds
    (at least 5 MiB, at most 5 GiB, at most 10,000 parts)."""
    return max(_S3_PART_MIN, min(wanted, _S3_PART_MAX), -(-size // _S3_PARTS))


async def _start_incoming(
    request: web.Request, s3: S3BlobStore, upload: str, size: int
) -> web.Response:
    if size == 0:
        raise HttpError(400, "invalid", "an empty blob has no parts: PUT /v1/blobs/DIGEST")
    part = part_size(size, int_query(request, "part_size", 64 << 20))
    upload_id = await s3.start_incoming(upload)
    reply: dict[str, object] = {"upload": upload, "part_size": part}
    if _presigning(request):
        numbers = range(1, -(-size // part) + 1)
        reply["urls"] = await s3.presign_parts(upload, upload_id, numbers, PART_URL_EXPIRY)
    return msgpack_response(reply, 201)


async def _upload_id(s3: S3BlobStore, upload: str) -> str:
    upload_id = await s3.find_incoming(upload)
    if upload_id is None:
        raise HttpError(404, "upload_gone", "this upload expired or was completed: start another")
    return upload_id


async def _incoming_listing(s3: S3BlobStore, upload: str) -> dict[int, int]:
    """{index: size} of the parts S3 holds ({} once the upload is gone)."""
    upload_id = await s3.find_incoming(upload)
    if upload_id is None:
        return {}
    try:
        parts = await s3.incoming_parts(upload, upload_id)
    except NotFoundError:
        return {}
    return {number - 1: size for number, (size, _) in parts.items()}


async def _relay_part(
    request: web.Request, s3: S3BlobStore, upload: str, index: int, limit: int
) -> web.Response:
    """Stream one part's body on to S3 as it arrives (never whole in memory, never on disk)."""
    length = request.content_length
    if length is None:
        raise HttpError(411, "length_required", "send the body with a Content-Length")
    if length > limit:
        raise HttpError(413, "too_large", f"{length} bytes exceed this server's {limit} limit")
    upload_id = await _upload_id(s3, upload)
    failed: list[BaseException] = []

    async def body() -> AsyncIterator[bytes]:
        got = 0
        try:
            while chunk := await next_chunk(request):
                got += len(chunk)
                if got > length:
                    raise HttpError(400, "invalid", "the body is longer than its Content-Length")
                yield chunk
            if got != length:  # S3 must not see a short part as a whole one: fail the request
                raise HttpError(400, "incomplete", f"the body ended after {got} of {length} bytes")
        except BaseException as e:
            failed.append(e)
            raise

    try:
        await s3.put_incoming_part(upload, upload_id, index + 1, length, body())
    except NotFoundError:
        raise HttpError(404, "upload_gone", "this upload expired or was completed") from None
    except Exception:
        if failed:
            raise failed[0] from None
        raise
    return msgpack_response({"size": length}, 201)


async def _complete_incoming(s3: S3BlobStore, upload: str, digest: str, size: int) -> None:
    """Join, verify and adopt an incoming upload (see the section's comment)."""
    gone = HttpError(400, "incomplete", "this upload expired or was completed: start another")
    if size == 0:
        raise HttpError(400, "invalid", "an empty blob has no parts: PUT /v1/blobs/DIGEST")
    async with s3.held():
        upload_id = await s3.find_incoming(upload)
        if upload_id is None:
            raise gone
        try:
            parts = await s3.incoming_parts(upload, upload_id)
        except NotFoundError:
            raise gone from None
        covered = _covered_parts(parts)
        if covered != size:
            raise HttpError(400, "incomplete", f"the parts hold {covered} of {size} bytes: resend")
        try:  # a failure leaves the parts to the expiry: a retry after an S3 hiccup keeps them
            await s3.complete_incoming(upload, upload_id, parts)
        except NotFoundError:
            raise gone from None
        try:
            got, held = await s3.adopt_incoming(upload, digest, size)
        finally:  # adopted, or wrong: the incoming object goes either way
            await s3.drop_incoming(upload)
    if held != size:
        raise HttpError(400, "invalid", f"the parts hold {held} bytes, not {size}")
    if got != digest:
        raise HttpError(
            422,
            "digest_mismatch",
            f"the parts ({size} bytes) hash to {got}, not {digest}; nothing was stored",
            got=got,
        )


def _covered_parts(parts: dict[int, tuple[int, str]]) -> int:
    """Bytes of the parts numbered 1, 2, ... without a gap (a part past a gap is not counted,
    and so makes the total fall short: it would end up in the middle of the blob)."""
    if sorted(parts) != list(range(1, len(parts) + 1)):
        return -1
    return sum(size for size, _ in parts.values())


async def urls(request: web.Request) -> web.Response:
    """POST /v1/blobs/urls [digest, ...]: {"urls": {digest: URL or None}, "presign": bool}:
    presigned GET URLs (for ``BLOB_URL_EXPIRY`` seconds) when the store is S3 and presigning is
    on, else None (read through ``GET /v1/blobs/{digest}``). 404 for a blob the token may not
    see, as for its bytes. The client verifies what it reads."""
    await grant_of(request)
    digests = await msgpack_body(request, _DIGESTS)
    if len(digests) > _URLS_AT_ONCE:
        raise HttpError(413, "too_large", f"at most {_URLS_AT_ONCE} digests per request")
    if invisible := await hidden(request, digests):
        raise _not_found(min(invisible))
    s3 = _s3(request)
    if s3 is None or not _presigning(request):
        return msgpack_response({"urls": dict.fromkeys(digests), "presign": False})
    async with s3.held():
        found: dict[str, str | None] = {}
        for index, digest in enumerate(digests):
            found[digest] = await s3.presign("GET", digest, BLOB_URL_EXPIRY)
            if index % 256 == 255:  # signing is CPU on the loop: let other requests in
                await anyio.lowlevel.checkpoint()
    return msgpack_response({"urls": found, "presign": True})


async def _read_small_s3(s3: S3BlobStore, digests: list[str]) -> list[bytes | None]:
    """The batch of ``download_batch`` from S3: each blob that fits read whole, None for the
    others (told by the size S3 announces before the body: a large one is not read).
    ``_S3_READS`` at once: one GET after another made a batch wait on every round trip."""
    out: list[bytes | None] = [None] * len(digests)
    budget = BATCH_BYTES
    errors: list[Exception] = []
    limiter = anyio.CapacityLimiter(_S3_READS)

    async def one(index: int, digest: str) -> None:
        nonlocal budget
        async with limiter:
            try:
                async with s3.reading(digest) as (size, _, chunks):
                    if size > min(budget, SMALL_BLOB):
                        return  # left to its own GET
                    budget -= size
                    out[index] = b"".join([chunk async for chunk in chunks])
            except NotFoundError:
                errors.append(_not_found(digest))
            except Exception as e:  # raised below, alone (not as a task group's group)
                errors.append(e)

    async with s3.held(), anyio.create_task_group() as group:
        for index, digest in enumerate(digests):
            group.start_soon(one, index, digest)
    if errors:
        raise errors[0]
    return out


async def _relay(request: web.Request, s3: S3BlobStore, digest: str) -> web.StreamResponse:
    """Stream a blob from S3 to the client as it arrives (with ``Range``: from its start)."""
    start = request.http_range.start or 0
    if start < 0:  # a suffix range (bytes=-N): clients resume from an offset, never need one
        raise HttpError(416, "invalid_range", "suffix ranges are not served: ask bytes=START-")
    try:
        async with s3.reading(digest, start) as (total, length, chunks):
            headers = {"Content-Type": _OCTETS, "Content-Length": str(length)}
            if start:
                headers["Content-Range"] = f"bytes {start}-{total - 1}/{total}"
            response = web.StreamResponse(status=206 if start else 200, headers=headers)
            await response.prepare(request)
            async for chunk in chunks:
                await response.write(chunk)
    except NotFoundError:
        raise _not_found(digest) from None
    await response.write_eof()
    return response
