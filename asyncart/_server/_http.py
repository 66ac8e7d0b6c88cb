"""Request plumbing shared by the routes: errors as JSON, bearer-token checks, access log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread
import msgspec
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .._backends._wire import MSGPACK, pack, unpack
from .._errors import (
    AsyncartError,
    BackendUnavailableError,
    ConflictError,
    FileChangedError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
)
from ._tokens import Grant, Grants

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


@web.middleware
async def drained(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Track requests in flight; refuse new ones while the server drains."""
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
    """Translate our errors (and aiohttp's own 4xx/5xx) into JSON error bodies."""
    try:
        return await handler(request)
    except HttpError as e:
        return error_response(e.status, e.code, str(e), **e.extra)
    except ConflictError as e:
        return error_response(409, "conflict", str(e), head=e.head)
    except AsyncartError as e:
        status, code = next(((s, c) for t, s, c in _STATUS if isinstance(e, t)), (500, "error"))
        return error_response(status, code, str(e))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_response(e.status, e.reason.lower().replace(" ", "_"), e.text or e.reason)


async def grant_of(request: web.Request) -> Grant:
    """The caller's grant. Raises HttpError 401 for a missing or unknown token."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HttpError(401, "unauthorized", "send a token: 'Authorization: Bearer <token>'")
    grants = request.app[GRANTS]
    if grants.stale:
        await anyio.to_thread.run_sync(grants.refresh)
    grant = grants.lookup(token.strip())
    if grant is None:  # maybe minted a moment ago: one stat tells (a reload only if it changed)
        await anyio.to_thread.run_sync(grants.refresh)
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


async def msgpack_body(request: web.Request, limit: int | None = None) -> Any:
    """The request's msgpack body, of at most ``limit`` bytes (default: the app's
    ``client_max_size``). Raises HttpError 413 for a larger one, 400 for garbage."""
    if limit is None:
        body = await request.read()  # aiohttp enforces client_max_size
    else:
        length = request.content_length
        if length is None:
            raise HttpError(411, "length_required", "send the body with a Content-Length")
        if length > limit:
            raise HttpError(413, "too_large", f"the body exceeds this server's {limit} limit")
        try:
            body = await request.content.readexactly(length)
        except asyncio.IncompleteReadError:
            raise HttpError(400, "incomplete", "the body ended early") from None
    try:
        return unpack(body)
    except msgspec.DecodeError:
        raise HttpError(400, "invalid", "the body is not msgpack") from None


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
                    "bytes": response.body_length,
                    "ms": round(time * 1000, 2),
                    "token": request.get(GRANT_ID),
                }
            )
        )


access_logger = logging.getLogger("asyncart.server.access")
