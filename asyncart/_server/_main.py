"""Running the server: ``serve`` (a coroutine) and the ``serve`` / ``token`` commands.

The ``asyncart`` CLI runs them as ``asyncart serve --store DIR`` and ``asyncart token
create|list|revoke --store DIR ...`` (also ``python -m asyncart._server serve|token ...``). They
run their own event loop (or none), so they are plain functions, not registered async commands.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import shutil
import signal
import ssl
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import anyio.to_thread
from aiohttp import web

from .._backends.base import Creatable, Store
from .._backends.local import LocalStore
from .._errors import AsyncartError, BackendUnavailableError, InvalidInputError
from .._store import load_backend, open_store, prepare_store
from ._app import make_app
from ._blob_routes import PRESIGN, Limits
from ._connections import Listener, connection_cap
from ._http import DRAIN, AccessLogger
from ._tokens import Grant, TokenBook, token_book
from ._uploads import UPLOAD_EXPIRY

SHUTDOWN_TIMEOUT = 10.0
"""Seconds in-flight requests get to finish after SIGTERM or SIGINT."""


async def serve(
    store: str | Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    limits: Limits | None = None,
    upload_expiry: float = UPLOAD_EXPIRY,
    tls: ssl.SSLContext | None = None,
    ready: asyncio.Event | None = None,
    presign: bool = True,
) -> None:
    """Serve ``store`` (a local store's directory, or a ``postgresql://...?blobs=s3://...``
    URL) until SIGINT or SIGTERM, then drain.

    Prints ``listening on http://HOST:PORT`` (``https`` with ``tls``) once bound (``port=0``
    picks a free port). The parts of multipart uploads nobody continued for ``upload_expiry``
    seconds are removed. Serve with ``tls`` anywhere but loopback: tokens travel in headers.
    ``limits`` bounds bodies, the bytes of bodies held at once, idle and slow connections and
    their number (see :class:`Limits`).
    On S3, large blobs travel between clients and S3 by presigned URLs (the server authorizes
    and verifies); ``presign=False`` relays them through the server instead, for an S3
    endpoint the clients cannot reach.
    A directory that holds no store yet becomes one; so does a database without the schema.
    The tokens of a local store are in its ``tokens.json``; those of a PostgreSQL + S3 store
    in its database, so that several servers share them.

    Raises:
        InvalidInputError: ``store`` is empty or an ``http(s)://`` URL.
        BackendUnavailableError: the store cannot be created or written, or ``host:port``
            cannot be bound (the port is taken); the message says which and what to do.
    """
    await load_backend(store)
    opened = open_store(store)
    if not isinstance(opened, Creatable):
        raise InvalidInputError(f"{store} is a server: serve the store it serves, not it")
    await prepare_store(opened, create=True)
    limits = limits or Limits()
    # Held while serving: one database pool and one S3 client for every request, not a
    # connection and a client made (and closed) per request.
    async with opened.held(), _spool_of(opened) as spool:
        app = make_app(opened, token_book(opened), spool, limits, upload_expiry=upload_expiry)
        app[PRESIGN] = presign
        await _run(app, host, port, limits, tls, ready)


@contextlib.asynccontextmanager
async def _spool_of(store: Store) -> AsyncIterator[Path]:
    """Where request bodies land: in a local store (on its filesystem, so that a verified
    upload is linked in without a copy), else in a temporary directory removed at exit."""
    if isinstance(store, LocalStore):
        yield store.root / "spool"
        return
    spool = await anyio.to_thread.run_sync(tempfile.mkdtemp, None, "asyncart-spool-")
    try:
        yield Path(spool)
    finally:
        await anyio.to_thread.run_sync(shutil.rmtree, spool, True)


async def _run(
    app: web.Application,
    host: str,
    port: int,
    limits: Limits,
    tls: ssl.SSLContext | None,
    ready: asyncio.Event | None,
) -> None:
    runner = web.AppRunner(
        app,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("asyncart.server.access"),
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        handle_signals=False,
        keepalive_timeout=limits.idle_timeout,  # also the header read timeout: see _connections
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = Listener(runner, host, port, connection_cap(limits.max_connections), tls)
        try:
            bound = await site.start()
        except OSError as e:
            raise BackendUnavailableError(_cannot_listen(host, port, e)) from None
        print(f"listening on {'https' if tls else 'http'}://{host}:{bound}", flush=True)
        if ready is not None:
            ready.set()
        await stop.wait()
        await site.stop()  # no new connections
        await app[DRAIN].wait(SHUTDOWN_TIMEOUT)  # requests in flight finish, bodies included
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()


def _cannot_listen(host: str, port: int, e: OSError) -> str:
    """Why ``host:port`` cannot be bound, and what to do, in one line."""
    where = f"cannot listen on {host}:{port}"
    if e.errno == errno.EADDRINUSE:
        return (
            f"{where}: the port is in use (another server?); stop it or choose another port "
            "(0 picks a free one)"
        )
    if e.errno == errno.EACCES:
        return f"{where}: permission denied (ports below 1024 need privileges); choose another port"
    if e.errno == errno.EADDRNOTAVAIL:
        return f"{where}: this machine has no such address; give one of its own with --host"
    return f"{where}: {e.strerror or e}"


def serve_main(argv: Sequence[str] | None = None) -> int:
    """``asyncart serve --store DIR [--host H] [--port P] [--max-blob-bytes N]
    [--max-request-bytes N] [--max-staged-bytes N] [--max-bytes-in-flight N]
    [--max-connections N] [--idle-timeout SECONDS] [--upload-expiry SECONDS] [--no-presign]
    [--tls-cert PEM --tls-key PEM]``."""
    parser = argparse.ArgumentParser(prog="asyncart serve", description=serve.__doc__)
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` options, for a CLI that has subcommands."""
    parser.add_argument(
        "--store",
        required=True,
        help="the store to serve: a directory, or postgresql://...?blobs=s3://BUCKET/PREFIX "
        "(made if not there)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--max-blob-bytes", type=int, default=Limits.max_blob)
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=Limits.max_request,
        help="the largest body the server buffers: a batch of small blobs, a log append, a "
        "digest list (default: %(default)s)",
    )
    parser.add_argument(
        "--max-staged-bytes",
        type=int,
        default=Limits.max_staged,
        help="bytes of records of one append too large for one request (uploaded in parts "
        "as blobs, then published at once; the server holds it to validate it) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-bytes-in-flight",
        type=int,
        default=Limits.max_in_flight,
        help="buffered body bytes all requests together may hold; the rest wait their turn "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=Limits.max_connections,
        help="open connections; past it the longest-open idle one is closed (default: "
        "%(default)s, less where the file limit is lower)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=_seconds,
        default=Limits.idle_timeout,
        metavar="SECONDS",
        help="drop a connection that takes this long to send a request header, or pauses "
        "this long in a body (default: %(default).0f)",
    )
    parser.add_argument(
        "--upload-expiry",
        type=_seconds,
        default=UPLOAD_EXPIRY,
        metavar="SECONDS",
        help="remove the parts of a multipart upload nobody continued, listed or completed for "
        "this long (default: %(default).0f, 24 hours); its client then sends them again",
    )
    parser.add_argument(
        "--no-presign",
        action="store_true",
        help="on S3, relay large blobs through the server instead of handing clients presigned "
        "URLs (for an S3 endpoint the clients cannot reach)",
    )
    parser.add_argument(
        "--tls-cert", metavar="PEM", help="serve https with this certificate (chain) file"
    )
    parser.add_argument("--tls-key", metavar="PEM", help="the certificate's private key file")


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return seconds


def run_serve(args: argparse.Namespace) -> int:
    """Run ``serve`` with parsed arguments; log access as JSON lines on stderr. An error that
    stops the server (a busy port, a store that is not writable) is one line on stderr, exit 1.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    limits = Limits(
        max_blob=args.max_blob_bytes,
        max_request=args.max_request_bytes,
        max_staged=args.max_staged_bytes,
        max_in_flight=args.max_bytes_in_flight,
        max_connections=args.max_connections,
        idle_timeout=args.idle_timeout,
    )
    expiry, tls = args.upload_expiry, _tls(args.tls_cert, args.tls_key)
    try:
        asyncio.run(
            serve(
                args.store,
                args.host,
                args.port,
                limits=limits,
                upload_expiry=expiry,
                tls=tls,
                presign=not args.no_presign,
            )
        )
    except (AsyncartError, OSError) as e:
        print(f"asyncart serve: {_one_line(e)}", file=sys.stderr)
        return 1
    return 0


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _tls(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The server's TLS context from ``--tls-cert`` and ``--tls-key`` (None: plain HTTP)."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise SystemExit("asyncart serve: --tls-cert and --tls-key go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise SystemExit(f"asyncart serve: cannot load {cert} and {key}: {e}") from None
    return context


def token_main(argv: Sequence[str] | None = None) -> int:
    """``asyncart token create|list|revoke --store STORE ...``; errors are one line on stderr,
    exit 1. Only ``create`` makes a store; ``list`` and ``revoke`` need one."""
    args = token_parser().parse_args(argv)
    try:
        result: int = anyio.run(_token_command, args)
    except (AsyncartError, OSError) as e:
        print(f"asyncart token {args.command}: {_one_line(e)}", file=sys.stderr)
        return 1
    return result


async def _token_command(args: argparse.Namespace) -> int:
    if args.store.startswith(("http://", "https://")):
        raise InvalidInputError(
            "give the store the server serves (its directory or postgresql:// URL), not the "
            "server; an admin token mints more through the server (POST /v1/tokens)"
        )
    await load_backend(args.store)
    store = open_store(args.store)
    await prepare_store(store, create=args.command == "create")
    async with store.held():
        result: int = await args.run(args, token_book(store))
    await store.aclose()
    return result


_STORE_HELP = "the served store: its directory, or postgresql://...?blobs=s3://BUCKET/PREFIX"


def token_parser() -> argparse.ArgumentParser:
    """``asyncart token`` and its subcommands, each with its ``run`` function as a default."""
    parser = argparse.ArgumentParser(prog="asyncart token", description="the served store's tokens")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="mint a token; prints it once")
    add_token_arguments(create)
    listing = commands.add_parser("list", help="one row per token: id, scope, note, created")
    listing.add_argument("--store", required=True, help=_STORE_HELP)
    listing.add_argument("--json", action="store_true", help="print one JSON object per token")
    revoke = commands.add_parser("revoke", help="remove a token; servers refuse it within 1 s")
    revoke.add_argument("--store", required=True, help=_STORE_HELP)
    revoke.add_argument("id", help="the token's id (or a unique prefix), from `token list`")
    create.set_defaults(run=run_token)
    listing.set_defaults(run=run_token_list)
    revoke.set_defaults(run=run_token_revoke)
    return parser


def add_token_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``token create`` options, for a CLI that has subcommands."""
    parser.add_argument("--store", required=True, help=_STORE_HELP)
    parser.add_argument("--project", action="append", default=[], help="'*' for all")
    parser.add_argument("--write", action="store_true", help="may upload and append")
    parser.add_argument("--admin", action="store_true", help="may do anything, mint tokens")
    parser.add_argument("--note", default="", help="who or what the token is for")


async def run_token(args: argparse.Namespace, book: TokenBook) -> int:
    """Mint a token with parsed arguments and print it."""
    print(await book.create(args.project, write=args.write, admin=args.admin, note=args.note))
    return 0


async def run_token_list(args: argparse.Namespace, book: TokenBook) -> int:
    """Print the tokens (never their secrets): aligned columns, or JSON lines with ``--json``."""
    grants = await book.list()
    if args.json:
        for g in grants:
            print(json.dumps({**asdict(g), "created": _when(g)}))
        return 0
    if not grants:
        print("no tokens; `asyncart token create --store DIR ...` mints one", file=sys.stderr)
        return 0
    rows = [("ID", "SCOPE", "NOTE", "CREATED")]
    rows += [(g.id, g.scope, g.note or "-", _when(g) or "-") for g in grants]
    widths = [max(len(c) for c in column) for column in zip(*rows, strict=True)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


async def run_token_revoke(args: argparse.Namespace, book: TokenBook) -> int:
    """Revoke a token by id and print what it granted."""
    g = await book.revoke(args.id)
    note = f" ({g.note})" if g.note else ""
    print(f"revoked {g.id}{note}, {g.scope}; a running server refuses it within a second")
    return 0


def _when(grant: Grant) -> str | None:
    """When the token was minted, as ``2026-01-31T12:00:00Z`` (None: not recorded)."""
    if grant.created is None:
        return None
    return datetime.fromtimestamp(grant.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m asyncart._server (serve|token) ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return serve_main(argv[1:])
    if argv[:1] == ["token"]:
        return token_main(argv[1:])
    print("usage: python -m asyncart._server (serve|token) --store DIR ...", file=sys.stderr)
    return 2
