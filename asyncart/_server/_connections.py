"""Listening with a cap on open connections, so that idle or slow clients cannot starve others.

aiohttp drops a connection that has not sent a whole request header ``keepalive_timeout``
seconds after it opened or after its last response (the header read timeout and the idle
timeout are one setting there), but it accepts connections without limit until the process
runs out of file descriptors; then ``accept`` fails and new clients wait in the backlog until
they time out. So the server raises its soft file limit to the hard one, keeps a reserve of
descriptors for files, and at the cap closes the longest-open idle connection (one waiting for
a request header) to admit a new one; when none is idle, the newcomer gets a 503 (clients retry).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

FILE_RESERVE = 256
"""File descriptors kept for everything but connections: blobs, logs, spool files, threads."""

_HANDSHAKE_LIMIT = 30.0  # seconds an accepted connection counts before its connection_made

_log = logging.getLogger("asyncart.server")


def connection_cap(wanted: int) -> int:
    """``wanted``, or less where the file limit (raised to its hard limit here) is too low."""
    try:
        import resource
    except ImportError:  # not POSIX: no limit to raise or read
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):  # e.g. macOS refuses above OPEN_MAX: keep what we have
            pass
    cap = min(wanted, max(soft - FILE_RESERVE, 16))
    if cap < wanted:
        _log.warning(
            "serving at most %d connections, not %d: the file limit is %d (raise `ulimit -n`)",
            cap,
            wanted,
            soft,
        )
    return cap


class Gate:
    """The protocol factory of the listening socket: admits each new connection to ``server``,
    closing an idle one first when ``cap`` are open."""

    def __init__(self, server: web.Server, cap: int) -> None:
        self.server, self.cap = server, cap
        # Connections accepted whose ``connection_made`` has not run yet: asyncio accepts a
        # burst of them in one step and calls it later, so ``server.connections`` alone would
        # let a burst past the cap. (A TLS handshake that fails never calls it: hence the age.)
        self._accepted: dict[RequestHandler, float] = {}

    def __call__(self) -> asyncio.BaseProtocol:
        now = time.monotonic()
        self._accepted = {
            h: since
            for h, since in self._accepted.items()
            if _not_yet_made(h) and now - since < _HANDSHAKE_LIMIT
        }
        live = [h for h in self.server.connections if h.transport is not None]
        if len(live) + len(self._accepted) >= self.cap:
            idle = next((h for h in live if _idle(h)), None)  # oldest first
            if idle is None:
                return _Busy()
            idle.force_close()
        handler = self.server()
        self._accepted[handler] = now
        return handler


def _not_yet_made(handler: RequestHandler) -> bool:
    """Whether ``connection_made`` has not run yet: no transport, and not lost (aiohttp drops
    its ``_manager`` when a connection is lost; without that attribute, assume made)."""
    return handler.transport is None and getattr(handler, "_manager", None) is not None


def _idle(handler: RequestHandler) -> bool:
    """Whether the connection waits for a request header: no request is being handled and
    none is parsed and waiting (also true of a connection accepted a moment ago, before its
    handler task first ran).

    The attributes are aiohttp's private ones, so a version without them counts every
    connection as busy (then a newcomer past the cap gets a 503, and nothing in progress is
    cut).
    """
    in_progress = getattr(handler, "_request_in_progress", True)
    waiting = getattr(handler, "_messages", True)
    return not in_progress and not waiting


_BUSY_BODY = json.dumps(
    {"error": "busy", "message": "the server has too many connections in progress; retry"}
).encode()
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nRetry-After: 1\r\nContent-Length: %d\r\n\r\n%s"
    % (len(_BUSY_BODY), _BUSY_BODY)
)


class _Busy(asyncio.Protocol):
    """Answers 503 and closes: a connection past the cap while every other one is working."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_BUSY)
        transport.close()


class Listener:
    """A listening socket whose connections pass a :class:`Gate` (aiohttp's sites have none)."""

    def __init__(
        self, runner: web.AppRunner, host: str, port: int, cap: int, tls: ssl.SSLContext | None
    ) -> None:
        self.runner, self.host, self.port, self.cap, self.tls = runner, host, port, cap, tls
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen; return the bound port. Raises OSError (e.g. the port is taken)."""
        assert self.runner.server is not None, "runner.setup() first"
        gate = Gate(self.runner.server, self.cap)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            gate, self.host, self.port, ssl=self.tls, backlog=1024, reuse_address=True
        )
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        """Stop accepting connections (open ones go on)."""
        if self._server is not None:
            self._server.close()
