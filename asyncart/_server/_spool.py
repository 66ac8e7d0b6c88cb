"""Receiving request bodies into files, off the event loop: whole blobs (hashed on the way)
and parts of multipart uploads (written in place, at their offset, in their upload's file)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import anyio
import anyio.abc
import anyio.to_thread
import blake3
from aiohttp import web

from ._http import BODIES, HttpError, next_chunk

_FLUSH = 4 << 20  # bytes gathered on the loop before one write (and hash) in a worker thread
Batch = list[bytes]
"""Chunks of a body as they arrived: a list, since joining them would copy every byte on the
event loop (that copy was a third of the server's CPU time for large uploads)."""


async def receive(request: web.Request, dest: str, limit: int) -> tuple[str, int]:
    """Stream the body to the new file ``dest`` while hashing it; return (digest, size).

    The body must have a ``Content-Length`` of at most ``limit``, and all of it must arrive;
    otherwise HttpError is raised and ``dest`` is removed.
    """
    expected = _length(request, limit)
    fd = await anyio.to_thread.run_sync(os.open, dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    hasher = blake3.blake3()  # one core hashes at several GB/s: far above the network
    written = 0

    def write(data: bytes) -> None:
        nonlocal written
        hasher.update(data)
        _pwrite_all(fd, data, written)
        written += len(data)

    try:
        await _pump(request, expected, write)
    except BaseException:
        await anyio.to_thread.run_sync(_discard, fd, dest)
        raise
    await anyio.to_thread.run_sync(os.close, fd)
    return hasher.hexdigest(), expected


async def receive_at(request: web.Request, path: str, offset: int, limit: int) -> int:
    """Stream the body into the existing file ``path`` at ``offset``; return its size.

    The file is closed when this returns (or raises): no write to it is left in flight.

    Raises:
        FileNotFoundError: ``path`` does not exist (it is never created here).
    """
    expected = _length(request, limit)
    fd = await anyio.to_thread.run_sync(os.open, path, os.O_WRONLY)
    position = offset

    def write(data: bytes) -> None:
        nonlocal position
        _pwrite_all(fd, data, position)
        position += len(data)

    try:
        await _pump(request, expected, write)
    finally:
        await anyio.to_thread.run_sync(os.close, fd)
    return expected


def _length(request: web.Request, limit: int) -> int:
    expected = request.content_length
    if expected is None:
        raise HttpError(411, "length_required", "send the body with a Content-Length")
    if expected > limit:
        raise HttpError(413, "too_large", f"{expected} bytes exceed this server's {limit} limit")
    return expected


async def _pump(request: web.Request, expected: int, write: Callable[[bytes], None]) -> None:
    """Move the body to ``write`` (run in a worker thread) in batches of about 4 MiB.

    Reading and writing overlap: while one batch is written, the next one is received (one
    batch in flight and one ready, at most: memory stays bounded).
    """
    # at most three batches are held (gathering, queued, being written): within the budget
    await request.app[BODIES].take(request, min(expected, 3 * _FLUSH))
    send, receive = anyio.create_memory_object_stream[Batch](1)

    async def writer() -> None:
        async with receive:
            async for batch in receive:
                await anyio.to_thread.run_sync(_write_each, write, batch)

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        async with send:
            size = await _read_into(request, expected, send)
    if size != expected:
        raise HttpError(400, "incomplete", f"the body ended after {size} of {expected} bytes")


async def _read_into(
    request: web.Request, expected: int, send: anyio.abc.ObjectSendStream[Batch]
) -> int:
    size = flushed = 0
    pending: Batch = []
    while chunk := await next_chunk(request):
        size += len(chunk)
        if size > expected:
            raise HttpError(400, "invalid", "the body is longer than its Content-Length")
        pending.append(chunk)
        if size - flushed >= _FLUSH:
            await send.send(pending)
            pending, flushed = [], size
    await send.send(pending)
    return size


def _write_each(write: Callable[[bytes], None], batch: Batch) -> None:
    for chunk in batch:
        write(chunk)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _discard(fd: int, path: str) -> None:
    os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def hash_file(path: str) -> tuple[str, int]:
    """BLAKE3 digest and size of a file, with every core (blocking)."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    hasher.update_mmap(path)
    return hasher.hexdigest(), os.stat(path).st_size
