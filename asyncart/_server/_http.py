"""Request plumbing shared by the routes: errors as JSON, bearer-token checks, access log."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio.to_thread
import msgspec
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .._backends._wire import MSGPACK, pack
from .._errors import (
    AsyncartError,
    BackendUnavailableError,
    CollectedError,
    ConflictError,
    FileChangedError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
)
from ._tokens import Grant, Grants

T = TypeVar("T")

GRANTS = web.AppKey("grants", Grants)
GRANT_ID = web.RequestKey("grant", str)
"""The id of the token a request came with, for the access log."""


class Drain:
    """Counts requests in flight, so that shutdown can wait for them (bodies included).

    aiohttp's own graceful shutdown stops reading from connections at once, which would cut
    uploads whose bodies are still arriving; so the server first stops listening, then waits
    here, and only then shuts aiohttp down. Requests that arrive meanwhile get a 503 (clients
    retry those).
    """

    def __init__(self) -> None:
        self.active = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.active += 1
        self._idle.clear()

    def leave(self) -> None:
        self.active -= 1
        if not self.active:
            self._idle.set()

    async def wait(self, grace: float) -> None:
        """Refuse new requests; wait until none is in flight, or ``grace`` seconds."""
        self.draining = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._idle.wait()


DRAIN = web.AppKey("drain", Drain)

SMALL_BODY = 64 << 10
"""Bodies up to this size are decoded on the event loop (a thread hop costs more)."""
BODY_WAIT = 10.0
"""Seconds a request waits for room in the body budget before it gets a 503 (clients retry)."""


class Bodies:
    """How buffered request bodies are received: their size limit, the budget of body bytes
    all requests together may hold in memory at once, and how long a client may pause.

    A request that would go over the budget waits its turn (in order of arrival, up to
    ``BODY_WAIT`` seconds), so many large bodies at once cannot take all the server's memory.
    Its bytes are given back when the request ends (see :func:`drained`).
    """

    def __init__(self, max_request: int, in_flight: int, idle_timeout: float) -> None:
        self.max_request, self.total, self.idle_timeout = max_request, in_flight, idle_timeout
        self.free = in_flight
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    async def take(self, request: web.Request, size: int) -> None:
        """Hold ``size`` bytes (at most the whole budget) until ``request`` ends."""
        size = min(size, self.total)
        if not self._waiting and size <= self.free:
            self.free -= size
        else:
            granted = asyncio.get_running_loop().create_future()
            self._waiting.append((size, granted))
            try:
                async with asyncio.timeout(BODY_WAIT):
                    await granted
            except BaseException as e:
                self._withdraw(size, granted)
                if isinstance(e, TimeoutError):
                    busy = "the server is busy receiving other bodies; retry"
                    raise HttpError(503, "busy", busy) from None
                raise
        request[HELD_BYTES] = request.get(HELD_BYTES, 0) + size

    def give_back(self, size: int) -> None:
        """Return bytes held by a request that ended; grant waiting requests that now fit."""
        self.free += size
        while self._waiting and self._waiting[0][0] <= self.free:
            size, granted = self._waiting.popleft()
            if not granted.done():  # not given up by its request
                self.free -= size
                granted.set_result(None)

    def _withdraw(self, size: int, granted: asyncio.Future[None]) -> None:
        if granted.done() and not granted.cancelled():  # granted just as the wait ended
            self.give_back(size)
            return
        with contextlib.suppress(ValueError):
            self._waiting.remove((size, granted))
        self.give_back(0)  # it may have been the head that kept smaller ones waiting


BODIES = web.AppKey("bodies", Bodies)
HELD_BYTES = web.RequestKey("held_bytes", int)


@web.middleware
async def drained(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Track requests in flight (and give back their body bytes); refuse new ones while the
    server drains."""
    drain = request.app[DRAIN]
    if drain.draining:
        response = error_response(503, "shutting_down", "the server is shutting down; retry")
        response.force_close()
        return response
    drain.enter()
    try:
        return await handler(request)
    finally:
        drain.leave()
        request.app[BODIES].give_back(request.get(HELD_BYTES, 0))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpError(Exception):
    """Raised by a route to answer with a JSON error: ``{"error": code, "message": ...}``."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.extra = status, code, extra


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    """A JSON error body that a person with ``curl`` can read."""
    body = json.dumps({"error": code, "message": message, **extra})
    return web.Response(status=status, text=body, content_type="application/json")


_STATUS: list[tuple[type[AsyncartError], int, str]] = [
    (ConflictError, 409, "conflict"),
    (NotFoundError, 404, "not_found"),
    (FileChangedError, 422, "digest_mismatch"),
    (IntegrityError, 500, "integrity"),
    (InvalidInputError, 400, "invalid"),
    (BackendUnavailableError, 503, "unavailable"),
]


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Translate our errors (and aiohttp's own 4xx/5xx) into JSON error bodies; a full disk
    (however wrapped) into a 507."""
    try:
        return await handler(request)
    except Exception as e:
        if (response := _as_json(request, e)) is None:
            raise
        return response


def _as_json(request: web.Request, e: Exception) -> web.Response | None:
    if (full := out_of_space(e)) is not None:
        _log.error("%s %s: the store is out of space: %s", request.method, request.path, full)
        message = os.strerror(full.errno or errno.ENOSPC)  # no server paths in the message
        return error_response(
            507,
            "insufficient_storage",
            f"{message}; nothing was stored: free space on the server's disk (or raise its "
            "quota), then retry",
        )
    if isinstance(e, ExceptionGroup):  # raised in a task group (e.g. while a body streams in)
        found = (_as_json(request, inner) for inner in e.exceptions)
        return next((response for response in found if response is not None), None)
    if isinstance(e, HttpError):
        return error_response(e.status, e.code, _scrubbed(request, e), **e.extra)
    if isinstance(e, CollectedError):
        message = _scrubbed(request, e)
        return error_response(409, "collected", message, epoch=e.epoch, current=e.current)
    if isinstance(e, ConflictError):
        return error_response(409, "conflict", _scrubbed(request, e), head=e.head)
    if isinstance(e, AsyncartError):
        status, code = next(((s, c) for t, s, c in _STATUS if isinstance(e, t)), (500, "error"))
        return error_response(status, code, _scrubbed(request, e))
    if isinstance(e, web.HTTPException) and e.status >= 400:
        return error_response(e.status, e.reason.lower().replace(" ", "_"), e.text or e.reason)
    return None


SERVER_PATHS = web.AppKey("server_paths", tuple[str, ...])
"""The server's own directories (the store's, the spool's): error messages never show them."""


def _scrubbed(request: web.Request, error: Exception) -> str:
    """The error's message, with the server's directories replaced by what they are."""
    message = str(error)
    for path in request.app.get(SERVER_PATHS, ()):
        message = message.replace(path, "<server store>")
    return message


_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
"""A full disk, a full quota, a file larger than the filesystem (or RLIMIT_FSIZE) allows."""


def out_of_space(error: BaseException | None) -> OSError | None:
    """The OSError saying the disk (or quota) is full, in ``error``'s causes and groups."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _NO_ROOM:
            return error
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                if (found := out_of_space(inner)) is not None:
                    return found
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return None


async def grant_of(request: web.Request) -> Grant:
    """The caller's grant. Raises HttpError 401 for a missing or unknown token."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HttpError(401, "unauthorized", "send a token: 'Authorization: Bearer <token>'")
    grants = request.app[GRANTS]
    asked = time.monotonic()
    if grants.stale:
        await grants.refresh(since=asked - 1.0)
    grant = grants.lookup(token.strip())
    if grant is None:  # maybe minted a moment ago: a reload that starts after we asked tells
        await grants.refresh(since=asked)
        grant = grants.lookup(token.strip())
    if grant is None:
        raise HttpError(401, "unauthorized", "unknown token (revoked, or for another server)")
    request[GRANT_ID] = grant.id
    return grant


def require(allowed: bool, what: str) -> None:
    """Raises HttpError 403 unless ``allowed``."""
    if not allowed:
        raise HttpError(403, "forbidden", f"this token may not {what}")


def msgpack_response(value: Any, status: int = 200) -> web.Response:
    """A msgpack body."""
    return web.Response(status=status, body=pack(value), content_type=MSGPACK)


async def msgpack_body(
    request: web.Request, decoder: msgspec.msgpack.Decoder[T], limit: int | None = None
) -> T:
    """The request's msgpack body as ``decoder``'s type, of at most ``limit`` bytes (default:
    the app's ``max_request``).

    The size is checked on ``Content-Length`` before a byte is read, the bytes are held only
    within the app's :class:`Bodies` budget, and a body over ``SMALL_BODY`` is decoded in a worker
    thread. Raises HttpError 411 without a length, 413 for a larger body, 400 for garbage or
    a body of the wrong shape, 408 for a client that stops sending, 503 when the budget stays
    full.
    """
    return await decoded(decoder, await whole_body(request, limit))


async def whole_body(request: web.Request, limit: int | None = None) -> bytearray:
    """The request's body, of at most ``limit`` bytes (default: the app's ``max_request``),
    checked and held as :func:`msgpack_body` says."""
    bodies = request.app[BODIES]
    limit = bodies.max_request if limit is None else limit
    length = request.content_length
    if length is None:
        raise HttpError(411, "length_required", "send the body with a Content-Length")
    if length > limit:
        raise HttpError(413, "too_large", f"the body exceeds this server's {limit} byte limit")
    await bodies.take(request, length)
    return await _read_body(request, length)


async def decoded(decoder: msgspec.msgpack.Decoder[T], body: bytearray) -> T:
    """``body`` as ``decoder``'s type (in a worker thread when large). Raises HttpError 400."""
    if len(body) <= SMALL_BODY:
        value = _decode(decoder, body)
    else:
        value = await anyio.to_thread.run_sync(_decode, decoder, body)
    if isinstance(value, _Problem):
        raise HttpError(400, "invalid", value)
    return value


class _Problem(str):
    """What is wrong with a body."""


def _decode(decoder: msgspec.msgpack.Decoder[T], body: bytearray) -> T | _Problem:
    """The value, or what is wrong with the body. Returned, not raised: a traceback would keep
    the body alive (in a reference cycle) until the garbage collector runs."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as e:
        return _Problem(f"the body has the wrong shape: {e}")
    except msgspec.DecodeError:
        return _Problem("the body is not msgpack")


async def _read_body(request: web.Request, length: int) -> bytearray:
    """Exactly ``length`` bytes of body (aiohttp stops at the ``Content-Length``), in one
    buffer: the chunks are not held twice."""
    body = bytearray(length)
    got = 0
    while got < length:
        chunk = await next_chunk(request)
        if not chunk:
            raise HttpError(400, "incomplete", f"the body ended after {got} of {length} bytes")
        body[got : got + len(chunk)] = chunk
        got += len(chunk)
    return body


async def next_chunk(request: web.Request) -> bytes:
    """The next bytes of the body (``b""`` at its end). Raises HttpError 408 when the client
    sends nothing for the idle timeout: a stalled body must not hold its budget forever."""
    idle = request.app[BODIES].idle_timeout
    try:
        async with asyncio.timeout(idle):
            return await request.content.readany()
    except TimeoutError:
        raise HttpError(408, "timeout", f"no body bytes for {idle:g} s; send again") from None


def int_query(request: web.Request, name: str, default: int | None = None) -> int:
    """A non-negative integer query parameter. Raises HttpError 400."""
    raw = request.query.get(name)
    if raw is None and default is not None:
        return default
    try:
        value = int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise HttpError(400, "invalid", f"query parameter {name!r} must be an integer") from None
    if value < 0:
        raise HttpError(400, "invalid", f"query parameter {name!r} must be >= 0")
    return value


class AccessLogger(AbstractAccessLogger):
    """One JSON object per request on the ``asyncart.server.access`` logger."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            json.dumps(
                {
                    "remote": request.remote,
                    "method": request.method,
                    "path": request.path,
                    "status": response.status,
                    "sent": request.content_length,  # the request body's declared length
                    "bytes": response.body_length,
                    "ms": round(time * 1000, 2),
                    "token": request.get(GRANT_ID),
                }
            )
        )


access_logger = logging.getLogger("asyncart.server.access")
_log = logging.getLogger("asyncart.server")
