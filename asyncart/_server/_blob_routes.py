"""Blob routes: which digests are missing, streamed upload (whole or in parts), download.

Blobs are content-addressed and shared by every project (that is where dedup comes from), so
any valid token may read them and any token that may write somewhere may upload them; a blob is
only reachable through a project's log records if the token may read that project.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import anyio.to_thread
from aiohttp import web

from .._backends._wire import DIGEST, MAX_DIGESTS
from .._backends.base import Store, UploadItem
from ._http import HttpError, grant_of, int_query, msgpack_body, msgpack_response, require
from ._spool import concatenate, receive


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
    """Bytes of any other request body (log appends, digest lists)."""
    page_bytes: int = 8 << 20
    """About how many record bytes one log page carries."""


@runtime_checkable
class BlobPaths(Protocol):
    """A blob store whose blobs are local files (the local one): served with ``sendfile``."""

    def path(self, digest: str) -> str: ...


STORE = web.AppKey("store", Store)
_OCTETS = "application/octet-stream"
SPOOL = web.AppKey("spool", Path)
LIMITS = web.AppKey("limits", Limits)


def _digest(request: web.Request) -> str:
    digest = request.match_info["digest"]
    if not DIGEST.fullmatch(digest):
        raise HttpError(400, "invalid", f"{digest!r} is not a BLAKE3 hex digest")
    return digest


async def missing(request: web.Request) -> web.Response:
    """POST /v1/blobs/missing: the subset of the posted digests the store lacks."""
    await grant_of(request)
    digests = await msgpack_body(request)
    if not isinstance(digests, list) or len(digests) > MAX_DIGESTS:
        raise HttpError(400, "invalid", f"post a list of at most {MAX_DIGESTS} digests")
    if not all(isinstance(d, str) and DIGEST.fullmatch(d) for d in digests):
        raise HttpError(400, "invalid", "every digest must be 64 lowercase hex characters")
    return msgpack_response(sorted(await request.app[STORE].blobs.missing(digests)))


async def upload(request: web.Request) -> web.Response:
    """PUT /v1/blobs/{digest}: store the body if it hashes to ``digest``, else store nothing."""
    require((await grant_of(request)).writes_somewhere, "upload blobs")
    digest = _digest(request)
    spool = str(request.app[SPOOL] / f"{digest}.{secrets.token_hex(6)}.body")
    try:
        got, size = await receive(request, spool, request.app[LIMITS].max_blob)
        await _store(request.app[STORE], spool, digest, got, size)
    finally:
        await anyio.to_thread.run_sync(_unlink, spool)
    return msgpack_response({"size": size}, 201)


async def _store(store: Store, spool: str, digest: str, got: str, size: int) -> None:
    if got != digest:
        raise HttpError(
            422,
            "digest_mismatch",
            f"the body ({size} bytes) hashes to {got}, not {digest}; nothing was stored",
            got=got,
        )
    await store.blobs.put_files([UploadItem(spool, digest, size)])


async def download(request: web.Request) -> web.StreamResponse:
    """GET /v1/blobs/{digest}: the blob's bytes, with ``Range`` support (for resuming)."""
    await grant_of(request)
    digest = _digest(request)
    blobs = request.app[STORE].blobs
    if await blobs.missing([digest]):
        raise HttpError(404, "not_found", f"blob {digest} is missing from the store")
    if isinstance(blobs, BlobPaths):
        return web.FileResponse(
            blobs.path(digest), headers={"Content-Type": "application/octet-stream"}
        )
    spool = str(request.app[SPOOL] / f"{digest}.{secrets.token_hex(6)}.out")
    try:
        await blobs.get_files([(digest, spool)])  # verified by the backend
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


# -- multipart uploads: parts are kept until `complete`, so a dropped upload resumes -------


def _parts_dir(request: web.Request, digest: str) -> Path:
    size = int_query(request, "size")
    if size > request.app[LIMITS].max_blob:
        limit = request.app[LIMITS].max_blob
        raise HttpError(413, "too_large", f"{size} bytes exceed this server's {limit} limit")
    return request.app[SPOOL] / "parts" / f"{digest}-{size}"


async def parts(request: web.Request) -> web.Response:
    """GET /v1/uploads/{digest}?size=N: the parts received so far, as {index: size}."""
    require((await grant_of(request)).writes_somewhere, "upload blobs")
    where = _parts_dir(request, _digest(request))
    return msgpack_response(await anyio.to_thread.run_sync(_list_parts, where))


def _list_parts(where: Path) -> dict[int, int]:
    try:
        names = os.listdir(where)
    except FileNotFoundError:
        return {}
    return {int(n): os.stat(where / n).st_size for n in names if n.isdigit()}


async def put_part(request: web.Request) -> web.Response:
    """PUT /v1/uploads/{digest}/{index}?size=N: one part; visible once it arrived whole."""
    require((await grant_of(request)).writes_somewhere, "upload blobs")
    where = _parts_dir(request, _digest(request))
    index = int(request.match_info["index"])
    if index >= request.app[LIMITS].max_parts:
        raise HttpError(413, "too_large", f"at most {request.app[LIMITS].max_parts} parts")
    await anyio.to_thread.run_sync(lambda: where.mkdir(parents=True, exist_ok=True))
    tmp = str(where / f".{index}.{secrets.token_hex(4)}")
    try:
        _, size = await receive(request, tmp, request.app[LIMITS].max_part)
        await anyio.to_thread.run_sync(os.replace, tmp, str(where / str(index)))
    finally:
        await anyio.to_thread.run_sync(_unlink, tmp)
    return msgpack_response({"size": size}, 201)


async def complete(request: web.Request) -> web.Response:
    """POST /v1/uploads/{digest}/complete?size=N&parts=K: join, verify and store the parts."""
    require((await grant_of(request)).writes_somewhere, "upload blobs")
    digest = _digest(request)
    where = _parts_dir(request, digest)
    count = int_query(request, "parts")
    files = [str(where / str(i)) for i in range(count)]
    spool = str(request.app[SPOOL] / f"{digest}.{secrets.token_hex(6)}.joined")
    try:
        try:
            got, size = await anyio.to_thread.run_sync(concatenate, files, spool)
        except FileNotFoundError:
            raise HttpError(
                400, "incomplete", "a part is missing; list the parts, resend"
            ) from None
        expected = int_query(request, "size")
        if size != expected:
            raise HttpError(400, "incomplete", f"the parts hold {size} of {expected} bytes")
        await _store(request.app[STORE], spool, digest, got, size)
    except HttpError as e:
        if e.code == "digest_mismatch":  # the parts are wrong, not just incomplete: start over
            await anyio.to_thread.run_sync(shutil.rmtree, where, True)
        raise
    finally:
        await anyio.to_thread.run_sync(_unlink, spool)
    await anyio.to_thread.run_sync(shutil.rmtree, where, True)
    return msgpack_response({"size": size}, 201)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def clean_spool(spool: Path) -> None:
    """Remove what uploads in flight left when the last server process died (blocking).

    Finished parts of multipart uploads stay: they are what a client resumes from.
    """
    spool.mkdir(parents=True, exist_ok=True)
    for leftover in spool.glob("*.*"):
        leftover.unlink(missing_ok=True)
    for partial in spool.glob("parts/*/.*"):
        partial.unlink(missing_ok=True)
