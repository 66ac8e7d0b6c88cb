"""Receiving request bodies into temp files, hashing them on the way (off the event loop)."""

from __future__ import annotations

import contextlib
import os
from typing import BinaryIO

import anyio.to_thread
import blake3
from aiohttp import web

from ._http import HttpError

_FLUSH = 4 << 20  # bytes gathered on the loop before one write+hash in a worker thread


async def receive(request: web.Request, dest: str, limit: int) -> tuple[str, int]:
    """Stream the body to the new file ``dest`` while hashing it; return (digest, size).

    The body must have a ``Content-Length`` of at most ``limit``, and all of it must arrive;
    otherwise HttpError is raised and ``dest`` is removed.
    """
    expected = request.content_length
    if expected is None:
        raise HttpError(411, "length_required", "send the body with a Content-Length")
    if expected > limit:
        raise HttpError(413, "too_large", f"{expected} bytes exceed this server's {limit} limit")
    out: BinaryIO = await anyio.to_thread.run_sync(lambda: open(dest, "xb", buffering=0))  # noqa: SIM115
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO if expected > 16 << 20 else 1)
    size = 0
    try:
        pending = bytearray()
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > expected:
                raise HttpError(400, "invalid", "the body is longer than its Content-Length")
            pending += chunk
            if len(pending) >= _FLUSH:
                await anyio.to_thread.run_sync(_write, out, hasher, pending)
                pending = bytearray()
        await anyio.to_thread.run_sync(_write, out, hasher, pending)
        if size != expected:
            raise HttpError(400, "incomplete", f"the body ended after {size} of {expected} bytes")
    except BaseException:
        await anyio.to_thread.run_sync(_discard, out, dest)
        raise
    await anyio.to_thread.run_sync(out.close)
    return hasher.hexdigest(), size


def _write(out: BinaryIO, hasher: blake3.blake3, data: bytearray) -> None:
    hasher.update(data)
    view = memoryview(data)
    while view:
        view = view[out.write(view) :]


def _discard(out: BinaryIO, path: str) -> None:
    out.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def concatenate(parts: list[str], dest: str) -> tuple[str, int]:
    """Join the part files into ``dest`` while hashing; return (digest, size). Blocking."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    size = 0
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    with open(dest, "xb", buffering=0) as out:
        for part in parts:
            with open(part, "rb", buffering=0) as src:
                while n := src.readinto(buf):
                    hasher.update(view[:n])
                    _write_view(out, view[:n])
                    size += n
    return hasher.hexdigest(), size


def _write_view(out: BinaryIO, view: memoryview) -> None:
    while view:
        view = view[out.write(view) :]
