"""Running the server: ``serve`` (a coroutine) and the ``serve`` / ``token create`` commands.

Until the ``asyncart`` CLI wires them in, run ``python -m asyncart._server serve --store DIR``
and ``python -m asyncart._server token create --store DIR --project demo --write``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from .._backends.local import LocalStore
from ._app import make_app
from ._blob_routes import Limits
from ._http import DRAIN, AccessLogger
from ._tokens import create_token, tokens_path

SHUTDOWN_TIMEOUT = 10.0
"""Seconds in-flight requests get to finish after SIGTERM or SIGINT."""


async def serve(
    store: str | Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    limits: Limits | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Serve the local store in directory ``store`` until SIGINT or SIGTERM, then drain.

    Prints ``listening on http://HOST:PORT`` once bound (``port=0`` picks a free port).
    """
    root = Path(store).expanduser().absolute()  # noqa: ASYNC240 - no I/O, just $HOME and cwd
    app = make_app(LocalStore(root), tokens_path(root), root / "spool", limits)
    runner = web.AppRunner(
        app,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("asyncart.server.access"),
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        handle_signals=False,
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        print(f"listening on http://{host}:{bound}", flush=True)
        if ready is not None:
            ready.set()
        await stop.wait()
        await site.stop()  # no new connections
        await app[DRAIN].wait(SHUTDOWN_TIMEOUT)  # requests in flight finish, bodies included
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()


def serve_main(argv: Sequence[str] | None = None) -> int:
    """``asyncart serve --store DIR [--host H] [--port P] [--max-request-bytes N]``."""
    parser = argparse.ArgumentParser(prog="asyncart serve", description=serve.__doc__)
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` options, for a CLI that has subcommands."""
    parser.add_argument("--store", required=True, help="the local store directory to serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--max-blob-bytes", type=int, default=Limits.max_blob)
    parser.add_argument("--max-request-bytes", type=int, default=Limits.max_request)


def run_serve(args: argparse.Namespace) -> int:
    """Run ``serve`` with parsed arguments; log access as JSON lines on stderr."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    limits = Limits(max_blob=args.max_blob_bytes, max_request=args.max_request_bytes)
    asyncio.run(serve(args.store, args.host, args.port, limits=limits))
    return 0


def token_main(argv: Sequence[str] | None = None) -> int:
    """``asyncart token create --store DIR --project P [--project Q] [--write] [--admin]``."""
    parser = argparse.ArgumentParser(prog="asyncart token")
    commands = parser.add_subparsers(dest="command", required=True)
    add_token_arguments(commands.add_parser("create", help="mint a token; prints it once"))
    return run_token(parser.parse_args(argv))


def add_token_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``token create`` options, for a CLI that has subcommands."""
    parser.add_argument("--store", required=True, help="the served store directory")
    parser.add_argument("--project", action="append", default=[], help="'*' for all")
    parser.add_argument("--write", action="store_true", help="may upload and append")
    parser.add_argument("--admin", action="store_true", help="may do anything, mint tokens")
    parser.add_argument("--note", default="", help="who or what the token is for")


def run_token(args: argparse.Namespace) -> int:
    """Mint a token with parsed arguments and print it."""
    print(
        create_token(args.store, args.project, write=args.write, admin=args.admin, note=args.note)
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m asyncart._server (serve|token) ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return serve_main(argv[1:])
    if argv[:1] == ["token"]:
        return token_main(argv[1:])
    print("usage: python -m asyncart._server (serve|token create) --store DIR ...", file=sys.stderr)
    return 2
