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

from .._backends._wire import PREFIX, GcBody, MintBody, Published, Records, project_of
from .._backends.base import EventLog, Store, Swept
from .._gc import collect
from . import _blob_routes as blobs
from . import _staged as staged
from ._blob_routes import LIMITS, SPOOL, STORE, Limits, clean_spool
from ._http import (
    BODIES,
    DRAIN,
    GRANTS,
    SERVER_PATHS,
    Bodies,
    Drain,
    HttpError,
    drained,
    errors_as_json,
    grant_of,
    int_query,
    msgpack_body,
    msgpack_response,
    require,
)
from ._scope import SCOPE, Referenced, Scope
from ._seen import SeenBook, seen_book
from ._tokens import ALL, Grant, Grants, TokenBook, TokenFile
from ._uploads import UPLOAD_EXPIRY, UPLOADS, Uploads, expire_uploads
from ._validate import Streams, check_stream

STREAMS = web.AppKey("streams", Streams)

PAGE_RECORDS = 100_000
"""The most records one log page carries, whatever ``limit`` the client asks for."""
_FIRST_STEP = 8  # records of the first ranged read of a page (their sizes are not known yet)


def make_app(
    store: Store,
    tokens: str | Path | TokenBook,
    spool: str | Path,
    limits: Limits | None = None,
    *,
    upload_expiry: float = UPLOAD_EXPIRY,
    seen: SeenBook | None = None,
) -> web.Application:
    """An app serving ``store``; ``tokens`` is the tokens file (or a :class:`TokenBook`),
    ``spool`` a temp directory, ``seen`` where the blobs each token uploaded are noted
    (default: the store's own place for them, see ``_seen.py``).

    Put ``spool`` on the store's filesystem: uploads land there before the store takes them.
    The parts of a multipart upload that no request continued, listed or completed for
    ``upload_expiry`` seconds (default 24 hours) are removed, at startup and while serving;
    a client that comes back later sends them again.

    Raises:
        ValueError: an expiry is not a positive number of seconds.
    """
    limits = limits or Limits()
    app = web.Application(middlewares=[drained, errors_as_json], client_max_size=limits.max_request)
    app[DRAIN] = Drain()
    app[BODIES] = Bodies(limits.max_request, limits.max_in_flight, limits.idle_timeout)
    app[STORE], app[SPOOL], app[LIMITS] = store, Path(spool), limits
    book = TokenFile(tokens) if isinstance(tokens, str | Path) else tokens
    app[GRANTS] = Grants(book)
    app[UPLOADS] = Uploads(Path(spool) / "parts", upload_expiry)
    app[STREAMS], app[SCOPE] = Streams(store), Scope(store, seen or seen_book(store))
    own = {store.location, str(Path(spool).absolute())}
    if isinstance(book, TokenFile):
        own.add(str(Path(book.path).absolute().parent))
    app[SERVER_PATHS] = tuple(sorted(own, key=len, reverse=True))  # longest first
    app.cleanup_ctx.append(expire_uploads)
    app.on_startup.append(_prepare)
    app.on_cleanup.append(_close)
    app.add_routes(
        [
            web.get(f"{PREFIX}/health", health),
            web.get(f"{PREFIX}/limits", limits_of),
            web.post(f"{PREFIX}/blobs/missing", blobs.missing),
            web.post(f"{PREFIX}/blobs/flush", blobs.flush),
            web.post(f"{PREFIX}/blobs/batch", blobs.upload_batch),
            web.post(f"{PREFIX}/blobs/fetch", blobs.download_batch),
            web.post(f"{PREFIX}/blobs/urls", blobs.urls),
            web.put(f"{PREFIX}/blobs/{{digest}}", blobs.upload),
            web.get(f"{PREFIX}/blobs/{{digest}}", blobs.download),
            web.post(f"{PREFIX}/uploads/{{digest}}", blobs.start_upload),
            web.get(f"{PREFIX}/uploads/{{digest}}/{{upload}}", blobs.parts),
            web.post(f"{PREFIX}/uploads/{{digest}}/{{upload}}/complete", blobs.complete),
            web.put(f"{PREFIX}/uploads/{{digest}}/{{upload}}/{{index:\\d+}}", blobs.put_part),
            web.post(f"{PREFIX}/log/{{stream:.+}}", append),
            web.get(f"{PREFIX}/log/{{stream:.+}}", read),
            web.get(f"{PREFIX}/checkpoint/{{stream:.+}}", checkpoint),
            web.get(f"{PREFIX}/streams", streams),
            web.get(f"{PREFIX}/notes", notes),
            web.get(f"{PREFIX}/projects", projects),
            web.post(f"{PREFIX}/tokens", mint),
            web.get(f"{PREFIX}/blobs/epoch", epoch_of),
            web.post(f"{PREFIX}/gc", collect_garbage),
        ]
    )
    return app


_APPEND = msgspec.msgpack.Decoder(Records | Published)
_MINT = msgspec.msgpack.Decoder(MintBody)
_MINT_BYTES = 64 << 10


async def _prepare(app: web.Application) -> None:
    await anyio.to_thread.run_sync(clean_spool, app[SPOOL])
    await app[GRANTS].refresh()


async def _close(app: web.Application) -> None:
    await app[STORE].aclose()


async def health(request: web.Request) -> web.Response:
    """GET /v1/health: whether the server is up (no token needed)."""
    return msgpack_response({"ok": True})


async def limits_of(request: web.Request) -> web.Response:
    """GET /v1/limits: the sizes a client must keep to (any valid token)."""
    await grant_of(request)
    limits = request.app[LIMITS]
    return msgpack_response(
        {
            "max_request": limits.max_request,
            "page_bytes": limits.page_bytes,
            "max_staged": limits.max_staged,
        }
    )


async def append(request: web.Request) -> web.Response:
    """POST /v1/log/{stream}?expected_seq=N: validate the posted records, stamp them with the
    token and the server's time, and append them atomically (400: refused, nothing stored).

    A body ``{"parts": [[digest, size], ...]}`` instead of the records names blobs that hold
    them (an append too large for one request, see ``_staged.py``): published the same way."""
    stream = request.match_info["stream"]
    grant = await grant_of(request)
    require(grant.can_write(project_of(stream)), f"write to {stream!r}")
    check_stream(stream)
    expected = int_query(request, "expected_seq")
    epoch = int_query(request, "epoch") if "epoch" in request.query else None
    scope = request.app[SCOPE]
    body = await msgpack_body(request, _APPEND)
    posted = await staged.records_of(request, body) if isinstance(body, Published) else body
    referenced = Referenced()  # what the records reference, gathered as they are checked
    check = functools.partial(scope.refuse_unseen, grant, into=referenced)
    done = await request.app[STREAMS].append(stream, posted, expected, grant.id, check, epoch)
    await scope.appended(stream, expected, done.count, referenced, done.last_hash)
    return msgpack_response({"head": done.head})


async def read(request: web.Request) -> web.Response:
    """GET /v1/log/{stream}?from_seq=N&limit=L: records from N on, at most L (and at most
    ``PAGE_RECORDS``), about ``page_bytes`` at a time; ``more`` is false once the page
    reaches the stream's end, true when it was cut before the server saw the end (the next
    page may then be empty)."""
    stream = request.match_info["stream"]
    require((await grant_of(request)).can_read(project_of(stream)), f"read {stream!r}")
    check_stream(stream)
    first = int_query(request, "from_seq", 0)
    wanted = min(int_query(request, "limit", PAGE_RECORDS), PAGE_RECORDS)
    if wanted == 0:
        raise HttpError(400, "invalid", "query parameter 'limit' must be >= 1")
    log, budget = request.app[STORE].log, request.app[LIMITS].page_bytes
    page, more = await read_page(log, stream, first, wanted, budget)
    return msgpack_response({"records": page, "more": more})


async def read_page(
    log: EventLog, stream: str, first: int, wanted: int, budget: int
) -> tuple[list[bytes], bool]:
    """At most ``wanted`` records of ``stream`` from ``first`` on, up to the one that brings
    the page to ``budget`` bytes; and whether more may follow.

    The log is read in ranges that at most double and that fit the room left at the size of
    the largest record seen so far, so records past a page are read (and read again for the
    next page) only when one is larger than all before it in the page: paging through a
    stream reads each record about once, and a page costs what it holds, not the rest of the
    stream. (The contract's ``limit`` counts records, not bytes: a range of small records
    followed by much larger ones can still overshoot once, by at most that range.)
    """
    page: list[bytes] = []
    size, step, largest = 0, _FIRST_STEP, 1
    while True:
        ask = min(step, wanted - len(page))
        chunk = await log.read(stream, first + len(page), ask)
        for record in chunk:
            page.append(record)
            size += len(record)
            if size >= budget:
                return page, True
        if len(chunk) < ask:
            return page, False
        if len(page) == wanted:
            return page, True
        largest = max(largest, *map(len, chunk))
        step = max(1, min(2 * step, (budget - size) // largest))


async def streams(request: web.Request) -> web.Response:
    """GET /v1/streams?prefix=P: the streams under P that the token may read."""
    grant = await grant_of(request)
    log, names = request.app[STORE].log, set()
    for prefix in _readable(grant, request.query.get("prefix", "")):
        names.update(await log.streams(prefix))
    return msgpack_response(sorted(n for n in names if grant.can_read(project_of(n))))


async def notes(request: web.Request) -> web.Response:
    """GET /v1/notes?prefix=P: {stream: note} of the streams under P that the token may read
    (the server derives every note from the records it appends)."""
    grant = await grant_of(request)
    log, found = request.app[STORE].log, {}
    for prefix in _readable(grant, request.query.get("prefix", "")):
        found.update(await log.notes(prefix))
    return msgpack_response({n: found[n] for n in sorted(found) if grant.can_read(project_of(n))})


def _readable(grant: Grant, prefix: str) -> list[str]:
    """The prefixes to list for ``prefix``: itself for a token that reads everything, else
    the part of it in each project the token may read (so listing costs what it may see)."""
    if grant.admin or ALL in grant.projects:
        return [prefix]
    out = []
    for project in grant.projects:
        if prefix.startswith(f"{project}/"):
            return [prefix]
        if f"{project}/".startswith(prefix):
            out.append(f"{project}/")
    return out


async def projects(request: web.Request) -> web.Response:
    """GET /v1/projects: the projects that have streams and that the token may read."""
    grant = await grant_of(request)
    log = request.app[STORE].log
    if grant.admin or ALL in grant.projects:
        names = {project_of(n) for n in await log.streams("")}
    else:
        names = {p for p in grant.projects if await log.streams(f"{p}/")}
    return msgpack_response(sorted(p for p in names if grant.can_read(p)))


async def checkpoint(request: web.Request) -> web.Response:
    """GET /v1/checkpoint/{stream}: the checkpoint the server last saved for the stream
    (404 when there is none); the client checks it against the records."""
    stream = request.match_info["stream"]
    require((await grant_of(request)).can_read(project_of(stream)), f"read {stream!r}")
    check_stream(stream)
    data = await request.app[STORE].log.checkpoint(stream)
    if data is None:
        raise HttpError(404, "not_found", f"no checkpoint of {stream!r}")
    return web.Response(body=data, content_type="application/octet-stream")


async def mint(request: web.Request) -> web.Response:
    """POST /v1/tokens {"projects": [...], "write": bool, "note": str}: a new token (admin)."""
    require((await grant_of(request)).admin, "mint tokens")
    body = await msgpack_body(request, _MINT, _MINT_BYTES)
    grants = request.app[GRANTS]
    token = await grants.book.create(body.projects, write=body.write, note=body.note)
    await grants.refresh()
    return msgpack_response({"token": token}, 201)


async def epoch_of(request: web.Request) -> web.Response:
    """GET /v1/blobs/epoch: the store's collection epoch (any token; ``None``: never swept
    here), which a writer's append carries (see ``asyncart/_gc.py``)."""
    await grant_of(request)
    store = request.app[STORE]
    return msgpack_response({"epoch": await store.epoch() if isinstance(store, Swept) else None})


_GC = msgspec.msgpack.Decoder(GcBody)


async def collect_garbage(request: web.Request) -> web.Response:
    """POST /v1/gc {"grace": seconds, "dry_run": bool, "draft_ttl": seconds | None, "now":
    UNIX seconds, "project": name}: collect the store's garbage here, on the server (an admin
    token); the report."""
    require((await grant_of(request)).admin, "collect garbage")
    body = await msgpack_body(request, _GC, _MINT_BYTES)
    report = await collect(
        request.app[STORE],
        grace=body.grace,
        dry_run=body.dry_run,
        now=body.now,
        draft_ttl=body.draft_ttl,
        project=body.project,
    )
    return msgpack_response(msgspec.structs.asdict(report))
