"""The aiohttp application: any :class:`~asyncart._backends.base.Store` over HTTP.

The server moves records and verified blobs and checks tokens and sizes. It validates every
append (``_validate.py``: a writer cannot store garbage, nor forge who wrote a record or when)
and shows a token only the blobs its projects reference (``_scope.py``); reading artifacts,
replay and downloads are the library's work, in the client.
"""

from __future__ import annotations

import functools
from pathlib import Path

import anyio.to_thread
import msgspec
from aiohttp import web

from .._backends._wire import PREFIX, MintBody, Records, project_of
from .._backends.base import Store
from . import _blob_routes as blobs
from ._blob_routes import LIMITS, SPOOL, STORE, Limits, clean_spool
from ._http import (
    BODIES,
    DRAIN,
    GRANTS,
    SERVER_PATHS,
    Bodies,
    Drain,
    drained,
    errors_as_json,
    grant_of,
    int_query,
    msgpack_body,
    msgpack_response,
    require,
)
from ._scope import SCOPE, Scope
from ._tokens import Grants, create_token
from ._uploads import UPLOAD_EXPIRY, UPLOADS, Uploads, expire_uploads
from ._validate import Streams, check_stream

STREAMS = web.AppKey("streams", Streams)


def make_app(
    store: Store,
    tokens: str | Path,
    spool: str | Path,
    limits: Limits | None = None,
    *,
    upload_expiry: float = UPLOAD_EXPIRY,
) -> web.Application:
    """An app serving ``store``; ``tokens`` is the tokens file, ``spool`` a temp directory.

    Put ``spool`` on the store's filesystem: uploads land there before the store takes them.
    The parts of a multipart upload that no request continued, listed or completed for
    ``upload_expiry`` seconds (default 24 hours) are removed, at startup and while serving;
    a client that comes back later sends them again.

    Raises:
        ValueError: ``upload_expiry`` is not a positive number of seconds.
    """
    limits = limits or Limits()
    app = web.Application(middlewares=[drained, errors_as_json], client_max_size=limits.max_request)
    app[DRAIN] = Drain()
    app[BODIES] = Bodies(limits.max_request, limits.max_in_flight, limits.idle_timeout)
    app[STORE], app[SPOOL], app[LIMITS] = store, Path(spool), limits
    app[GRANTS] = Grants(Path(tokens))
    app[UPLOADS] = Uploads(Path(spool) / "parts", upload_expiry)
    app[STREAMS], app[SCOPE] = Streams(store), Scope(store)
    own = {store.location, str(Path(spool).absolute()), str(Path(tokens).absolute().parent)}
    app[SERVER_PATHS] = tuple(sorted(own, key=len, reverse=True))  # longest first
    app.cleanup_ctx.append(expire_uploads)
    app.on_startup.append(_prepare)
    app.on_cleanup.append(_close)
    app.add_routes(
        [
            web.get(f"{PREFIX}/health", health),
            web.post(f"{PREFIX}/blobs/missing", blobs.missing),
            web.post(f"{PREFIX}/blobs/flush", blobs.flush),
            web.post(f"{PREFIX}/blobs/batch", blobs.upload_batch),
            web.post(f"{PREFIX}/blobs/fetch", blobs.download_batch),
            web.put(f"{PREFIX}/blobs/{{digest}}", blobs.upload),
            web.get(f"{PREFIX}/blobs/{{digest}}", blobs.download),
            web.post(f"{PREFIX}/uploads/{{digest}}", blobs.start_upload),
            web.get(f"{PREFIX}/uploads/{{digest}}/{{upload}}", blobs.parts),
            web.post(f"{PREFIX}/uploads/{{digest}}/{{upload}}/complete", blobs.complete),
            web.put(f"{PREFIX}/uploads/{{digest}}/{{upload}}/{{index:\\d+}}", blobs.put_part),
            web.post(f"{PREFIX}/log/{{stream:.+}}", append),
            web.get(f"{PREFIX}/log/{{stream:.+}}", read),
            web.get(f"{PREFIX}/streams", streams),
            web.get(f"{PREFIX}/projects", projects),
            web.post(f"{PREFIX}/tokens", mint),
        ]
    )
    return app


_RECORDS = msgspec.msgpack.Decoder(Records)
_MINT = msgspec.msgpack.Decoder(MintBody)
_MINT_BYTES = 64 << 10


async def _prepare(app: web.Application) -> None:
    await anyio.to_thread.run_sync(clean_spool, app[SPOOL])
    await anyio.to_thread.run_sync(app[GRANTS].refresh)


async def _close(app: web.Application) -> None:
    await app[STORE].aclose()


async def health(request: web.Request) -> web.Response:
    """GET /v1/health: whether the server is up (no token needed)."""
    return msgpack_response({"ok": True})


async def append(request: web.Request) -> web.Response:
    """POST /v1/log/{stream}?expected_seq=N: validate the posted records, stamp them with the
    token and the server's time, and append them atomically (400: refused, nothing stored)."""
    stream = request.match_info["stream"]
    grant = await grant_of(request)
    require(grant.can_write(project_of(stream)), f"write to {stream!r}")
    check_stream(stream)
    expected = int_query(request, "expected_seq")
    payloads = await msgpack_body(request, _RECORDS)
    scope = request.app[SCOPE]
    done = await request.app[STREAMS].append(
        stream, payloads, expected, grant.id, functools.partial(scope.refuse_unseen, grant)
    )
    scope.appended(stream, expected, done.records, done.last_hash)
    return msgpack_response({"head": done.head})


async def read(request: web.Request) -> web.Response:
    """GET /v1/log/{stream}?from_seq=N: records from N on, a page of about 8 MiB at a time."""
    stream = request.match_info["stream"]
    require((await grant_of(request)).can_read(project_of(stream)), f"read {stream!r}")
    check_stream(stream)
    records = await request.app[STORE].log.read(stream, int_query(request, "from_seq", 0))
    page: list[bytes] = []
    size = 0
    for record in records:
        if page and size + len(record) > request.app[LIMITS].page_bytes:
            break
        page.append(record)
        size += len(record)
    return msgpack_response({"records": page, "more": len(page) < len(records)})


async def streams(request: web.Request) -> web.Response:
    """GET /v1/streams?prefix=P: the streams under P that the token may read."""
    grant = await grant_of(request)
    names = await request.app[STORE].log.streams(request.query.get("prefix", ""))
    return msgpack_response([n for n in names if grant.can_read(project_of(n))])


async def projects(request: web.Request) -> web.Response:
    """GET /v1/projects: the projects that have streams and that the token may read."""
    grant = await grant_of(request)
    names = {project_of(n) for n in await request.app[STORE].log.streams("")}
    return msgpack_response(sorted(p for p in names if grant.can_read(p)))


async def mint(request: web.Request) -> web.Response:
    """POST /v1/tokens {"projects": [...], "write": bool, "note": str}: a new token (admin)."""
    require((await grant_of(request)).admin, "mint tokens")
    body = await msgpack_body(request, _MINT, _MINT_BYTES)
    grants = request.app[GRANTS]
    token = await anyio.to_thread.run_sync(
        lambda: create_token(grants.path.parent, body.projects, write=body.write, note=body.note)
    )
    await anyio.to_thread.run_sync(grants.refresh)
    return msgpack_response({"token": token}, 201)
