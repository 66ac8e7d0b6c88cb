"""Staged appends: an append too large for one request arrives in parts, then is published
with one atomic ``EventLog.append``.

    POST   /v1/staged/{stream}               -> {"staged": id}      (write the stream's project)
    PUT    /v1/staged/{id}/{part}  [bytes..] -> {"records": n}      (the token that staged it)
    DELETE /v1/staged/{id}                   -> {}                  (the token that staged it)
    POST   /v1/log/{stream}?expected_seq=N&staged=ID&parts=P&records=R -> {"head": n}

A staging belongs to the token that started it and to one stream: to any other token its id
does not exist (404), as it does not for its own once published, refused, discarded or
expired. Each part is a msgpack list of records, checked for that shape and spooled to
``spool/staged/ID/PART`` (a part sent again replaces itself). The publish loads every part,
validates the records as any append (``Streams.append``: chain, events, fold, blob scope,
stamps) and appends them in one call: a refused or conflicting publish stores nothing.

Every publish ends its staging, whatever its outcome. The head a publish made is remembered
(per token, the last few), so a client whose reply was lost and that sends the publish again
gets that head; a publish sent again while the first still runs waits for its outcome.

The registry is in memory: a restarted server knows no staging and removes them all at
startup, so parts are written without ``fsync`` (a power cut loses nothing stored). The client
then stages again; if its first publish had landed, ``Streams._landed`` recognises the records.

Bounds per token: ``max_stagings`` open and ``max_staged`` bytes in them. Past either, the
token's own stagings idle for ``STALE`` seconds (a client that died) are dropped; if that is
not enough the request gets a 429 (clients retry). Stagings idle for the expiry are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import shutil
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio.to_thread
import msgspec
from aiohttp import web

from .._backends._wire import Records, project_of
from ._http import (
    BODIES,
    HttpError,
    decoded,
    grant_of,
    int_query,
    msgpack_response,
    require,
    whole_body,
)
from ._validate import Appended, check_stream

STAGING_EXPIRY = 3600.0
"""Seconds after which a staging that no request used is removed."""
STALE = 60.0
"""Seconds idle after which a token's staging may make room for its next one."""
_PUBLISHED = 16  # outcomes of publishes remembered per token
_ID = re.compile(r"[0-9a-f]{32}")
_RECORDS = msgspec.msgpack.Decoder(Records)

_log = logging.getLogger("asyncart.server")


MAX_PARTS = 4096
"""Parts one staging may hold: files in one spool folder, and requests to publish one append
(clients send parts of several MiB: a 512 MiB append is about 64)."""


@dataclass(eq=False)
class Staging:
    """One staged append in the making."""

    id: str
    owner: str  # the id of the token that started it
    stream: str
    where: Path
    parts: dict[int, tuple[int, int]] = field(default_factory=dict)  # part -> (bytes, records)
    receiving: int = 0  # bytes of parts being written now
    users: int = 0  # requests using it now
    used: float = field(default_factory=time.monotonic)
    outcome: asyncio.Future[Appended] | None = None  # set once a publish started

    @property
    def size(self) -> int:
        """Bytes on disk (or on their way there)."""
        return sum(size for size, _ in self.parts.values()) + self.receiving


class Stagings:
    """The staged appends of one server process under ``root`` (see the module docstring)."""

    def __init__(
        self, root: Path, max_bytes: int, max_count: int, expiry: float = STAGING_EXPIRY
    ) -> None:
        if not expiry > 0:
            raise ValueError(f"the staging expiry must be a positive number of seconds: {expiry}")
        self.root, self.max_bytes, self.max_count, self.expiry = root, max_bytes, max_count, expiry
        self._open: dict[str, Staging] = {}
        self._published: dict[str, OrderedDict[str, tuple[str, int]]] = {}  # owner -> id -> ..

    def clear(self) -> None:
        """Remove every staging on disk: a new process knows none of them (blocking)."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)

    async def start(self, owner: str, stream: str) -> Staging:
        """A new, empty staging of ``owner``'s for ``stream``."""
        await self._make_room(owner, new=1, extra=0)
        staging_id = secrets.token_hex(16)
        staging = Staging(staging_id, owner, stream, self.root / staging_id)
        self._open[staging.id] = staging  # counted at once: concurrent starts see it
        try:
            await anyio.to_thread.run_sync(staging.where.mkdir)
        except BaseException:
            del self._open[staging.id]
            raise
        return staging

    def find(self, staging_id: str, owner: str) -> Staging:
        """``owner``'s open staging ``staging_id``. Raises HttpError 404 for any other."""
        staging = self._open.get(staging_id) if _ID.fullmatch(staging_id) else None
        if staging is None or staging.owner != owner:
            raise _gone()
        return staging

    def published(self, staging_id: str, owner: str, stream: str) -> int | None:
        """The head that ``owner``'s publish of ``staging_id`` to ``stream`` made, if it did."""
        mine = self._published.get(owner)
        done = None if mine is None else mine.get(staging_id)
        return done[1] if done is not None and done[0] == stream else None

    @contextlib.asynccontextmanager
    async def using(self, staging: Staging) -> AsyncIterator[None]:
        """Keep ``staging`` from being dropped or expiring while a request uses it."""
        staging.users += 1
        try:
            yield
        finally:
            staging.users -= 1
            staging.used = time.monotonic()

    async def put(self, staging: Staging, part: int, data: bytearray, records: int) -> None:
        """Spool ``data`` (a msgpack list of ``records`` records) as part ``part`` of
        ``staging`` (inside :meth:`using`)."""
        if staging.outcome is not None:
            raise HttpError(409, "staging_published", "this staging is being published")
        if part not in staging.parts and len(staging.parts) >= MAX_PARTS:
            raise HttpError(
                413, "too_many_parts", f"a staging holds at most {MAX_PARTS} parts (send fewer)"
            )
        growth = len(data) - staging.parts.get(part, (0, 0))[0]  # a part sent again replaces
        if staging.size + growth > self.max_bytes:
            raise HttpError(
                413,
                "too_large",
                f"this staged append exceeds the server's {self.max_bytes} byte limit "
                "(--max-staged-bytes)",
            )
        await self._make_room(staging.owner, new=0, extra=growth)
        staging.receiving += len(data)
        try:
            await anyio.to_thread.run_sync(_write_part, staging.where, part, data)
        finally:
            staging.receiving -= len(data)
        staging.parts[part] = (len(data), records)

    async def publish(
        self,
        request: web.Request,
        staging: Staging,
        parts: int,
        records: int,
        append: Callable[[list[bytes]], Awaitable[Appended]],
    ) -> Appended:
        """Load the staged records and ``append`` them, once (inside :meth:`using`); then
        drop the staging. ``parts`` and ``records`` are what the client sent."""
        if staging.outcome is not None:  # sent again while the first publish runs
            return await asyncio.shield(staging.outcome)
        if staging.users > 1:
            raise HttpError(429, "parts_in_flight", "parts of this staging are still arriving")
        staging.outcome = outcome = asyncio.get_running_loop().create_future()
        try:
            payloads = await self._load(request, staging, parts, records)
            done = await append(payloads)
            self._remember(staging, done.head)  # before the staging goes: a retry finds one
            outcome.set_result(done)
            return done
        except BaseException as e:
            _settle(outcome, e)
            raise
        finally:
            await self.discard(staging)

    async def discard(self, staging: Staging) -> None:
        """Forget ``staging`` and remove its parts."""
        if self._open.get(staging.id) is staging:
            del self._open[staging.id]
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, staging.where, True)

    async def sweep(self) -> list[Staging]:
        """Remove the stagings no request used for the expiry."""
        return await self._drop(list(self._open.values()), self.expiry)

    async def run(self) -> None:
        """Sweep now and then until cancelled; a failed sweep is logged."""
        while True:
            await anyio.sleep(min(self.expiry / 4, 600.0))
            try:
                for staging in await self.sweep():
                    _log.info("removed the expired staging %s of %s", staging.id, staging.stream)
            except Exception:  # the sweeper must outlive any one bad sweep
                _log.exception("sweeping expired stagings in %s failed", self.root)

    async def _load(
        self, request: web.Request, staging: Staging, parts: int, records: int
    ) -> list[bytes]:
        if set(staging.parts) != set(range(parts)):
            raise HttpError(400, "incomplete", f"the staging holds parts {_ranges(staging)}")
        if (held := sum(n for _, n in staging.parts.values())) != records:
            raise HttpError(400, "incomplete", f"the staging holds {held} records, not {records}")
        await request.app[BODIES].take(request, staging.size)  # its records are held in memory
        return await anyio.to_thread.run_sync(_read_parts, staging.where, parts)

    async def _make_room(self, owner: str, new: int, extra: int) -> None:
        """Drop ``owner``'s stale stagings, oldest first, until ``new`` more stagings and
        ``extra`` more bytes fit its bounds. Raises HttpError 429 when they do not."""

        def fits() -> bool:
            mine = [s for s in self._open.values() if s.owner == owner]
            size = sum(s.size for s in mine) + extra
            return len(mine) + new <= self.max_count and size <= self.max_bytes

        for staging in sorted(self._open.values(), key=lambda s: s.used):
            if fits():
                return
            if staging.owner == owner and _idle_for(staging) >= STALE:
                await self.discard(staging)
        if not fits():
            raise HttpError(
                429,
                "too_many_staged",
                f"this token's staged appends would pass {self.max_count} stagings or "
                f"{self.max_bytes} bytes: let one be published, then retry",
            )

    async def _drop(self, stagings: list[Staging], idle: float) -> list[Staging]:
        dropped = []
        for staging in stagings:
            if _idle_for(staging) >= idle and self._open.get(staging.id) is staging:
                await self.discard(staging)
                dropped.append(staging)
        return dropped

    def _remember(self, staging: Staging, head: int) -> None:
        done = self._published.setdefault(staging.owner, OrderedDict())
        done[staging.id] = (staging.stream, head)
        while len(done) > _PUBLISHED:
            done.popitem(last=False)


def _idle_for(staging: Staging) -> float:
    """Seconds since a request last used ``staging`` (0 while one does or it publishes)."""
    if staging.users or staging.outcome is not None:
        return 0.0
    return time.monotonic() - staging.used


def _settle(outcome: asyncio.Future[Appended], error: BaseException) -> None:
    """Pass a failed publish on to a publish of the same staging waiting for it."""
    if isinstance(error, asyncio.CancelledError) or not isinstance(error, Exception):
        outcome.cancel()
    else:
        outcome.set_exception(error)
        outcome.exception()  # retrieved: nobody may be waiting, and that is fine


def _gone() -> HttpError:
    return HttpError(
        404,
        "staging_gone",
        "no such staging (it was published, refused, discarded or expired, or the server "
        "restarted): stage the records again",
    )


def _ranges(staging: Staging) -> str:
    return ", ".join(map(str, sorted(staging.parts))) or "none"


def _write_part(where: Path, part: int, data: bytearray) -> None:
    """Write one part under its name (a temp file renamed: a part sent again replaces it).
    No fsync: a restarted server removes every staging (see the module docstring)."""
    tmp = where / f".{part}.{secrets.token_hex(4)}"
    try:
        with open(tmp, "xb", buffering=0) as f:
            view = memoryview(data)
            while view:
                view = view[f.write(view) :]
        os.replace(tmp, where / str(part))
    except FileNotFoundError:  # removed meanwhile (it was dropped): nothing to keep
        raise _gone() from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_parts(where: Path, parts: int) -> list[bytes]:
    records: list[bytes] = []
    for part in range(parts):
        try:
            records += _RECORDS.decode((where / str(part)).read_bytes())
        except (OSError, msgspec.DecodeError):
            raise HttpError(
                500, "staging_damaged", f"staged part {part} is damaged: stage the records again"
            ) from None
    return records


STAGINGS = web.AppKey("stagings", Stagings)


async def keep_swept(app: web.Application) -> AsyncIterator[None]:
    """An ``app.cleanup_ctx``: remove every staging at startup, expired ones while serving."""
    stagings = app[STAGINGS]
    await anyio.to_thread.run_sync(stagings.clear)
    sweeper = asyncio.create_task(stagings.run(), name="asyncart expire stagings")
    try:
        yield
    finally:
        sweeper.cancel()
        await asyncio.wait([sweeper])


# -- routes -------------------------------------------------------------------------------


async def start(request: web.Request) -> web.Response:
    """POST /v1/staged/{stream}: a new staging for an append to ``stream``, as {"staged": id}."""
    stream = request.match_info["stream"]
    grant = await grant_of(request)
    require(grant.can_write(project_of(stream)), f"write to {stream!r}")
    check_stream(stream)
    staging = await request.app[STAGINGS].start(grant.id, stream)
    return msgpack_response({"staged": staging.id}, 201)


async def put_part(request: web.Request) -> web.Response:
    """PUT /v1/staged/{id}/{part} [bytes, ...]: one part of records (sent again: replaced)."""
    stagings, staging = await _own(request)
    digits = request.match_info["part"]
    if len(digits) > 6:  # a million parts of a request each: far past any staged budget
        raise HttpError(413, "too_large", "too many parts")
    async with stagings.using(staging):  # kept while its body arrives
        body = await whole_body(request)
        parsed: list[bytes] = await decoded(_RECORDS, body)  # the shape, checked
        records = len(parsed)
        del parsed  # only the body is kept
        if not records:
            raise HttpError(400, "invalid", "a part holds at least one record")
        await stagings.put(staging, int(digits), body, records)
    return msgpack_response({"records": records}, 201)


async def discard(request: web.Request) -> web.Response:
    """DELETE /v1/staged/{id}: give up a staging (one being published is left to finish)."""
    stagings, staging = await _own(request)
    if staging.outcome is None and not staging.users:
        await stagings.discard(staging)
    return msgpack_response({})


async def _own(request: web.Request) -> tuple[Stagings, Staging]:
    """The staging named in the path, if the request's token started it and may still write
    its stream (else HttpError 404, 401 or 403)."""
    grant = await grant_of(request)
    stagings = request.app[STAGINGS]
    staging = stagings.find(request.match_info["id"], grant.id)
    require(grant.can_write(project_of(staging.stream)), f"write to {staging.stream!r}")
    return stagings, staging


async def publish(
    request: web.Request,
    stream: str,
    owner: str,
    append: Callable[[list[bytes]], Awaitable[Appended]],
) -> Appended:
    """The publish of ``POST /v1/log/{stream}?staged=ID&parts=P&records=R`` (the caller has
    checked the token and the stream): ``append`` the staged records, at most once."""
    staging_id, stagings = request.query["staged"], request.app[STAGINGS]
    parts, records = int_query(request, "parts"), int_query(request, "records")
    if (head := stagings.published(staging_id, owner, stream)) is not None:
        return Appended(head, [], "")  # sent again: its reply was lost
    staging = stagings.find(staging_id, owner)
    if staging.stream != stream:
        raise HttpError(400, "invalid", "this staging is for another stream")
    async with stagings.using(staging):
        return await stagings.publish(request, staging, parts, records, append)
