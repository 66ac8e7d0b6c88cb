"""The ``asyncart`` command: a thin layer over the public API (it has no logic of its own).

Each subcommand is an ``async def NAME(args, console) -> int`` registered with
:func:`command`, next to a small function that declares its arguments, in a module of this
package that is imported below (``_commands``: put, get, alias, audit; ``_versions``: tag;
``_browse``: ls, versions, show, diff, log). Adding one::

    def _serve_args(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--port", type=int, default=8080, help="where to listen")

    @command("serve", _serve_args, "serve a store over HTTP", "asyncart serve --port 8080")
    async def serve(args: argparse.Namespace, console: Console) -> int:
        ...
        return 0

Results go to stdout (``--json``: JSON, one document or one line per item); progress bars,
errors and warnings to stderr. Exit codes: 0 success, 1 an error or a failed audit, 2 bad usage,
130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import anyio

import asyncart

from . import _browse, _commands, _files, _links, _retention, _versions  # noqa: F401  (they register commands)
from ._console import Console
from ._registry import COMMANDS, command

__all__ = ("COMMANDS", "Console", "build_parser", "command", "main")


def _common_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """Options every command takes, before or after its name (``default`` SUPPRESS after)."""
    flag: dict[str, Any] = {"action": "store_true", "default": default}
    parser.add_argument(
        "--store",
        metavar="DIR|URL",
        default=default,
        help=f"a store directory or http(s):// URL (default: ${asyncart.STORE_ENV}, else "
        "$XDG_DATA_HOME/asyncart, else ~/.local/share/asyncart); only commands that write "
        "create a store",
    )
    parser.add_argument(
        "--token",
        default=default,
        help="bearer token for an http(s):// store (default: $ASYNCART_TOKEN)",
    )
    parser.add_argument("--json", **flag, help="print JSON (one line per item for lists)")
    parser.add_argument("--quiet", "-q", **flag, help="print only the essential result")
    parser.add_argument("--progress", **flag, help="show progress even when not on a terminal")
    parser.add_argument("--debug", **flag, help="show a traceback on errors")


def build_parser() -> argparse.ArgumentParser:
    """The ``asyncart`` parser with every registered command."""
    parser = argparse.ArgumentParser(
        prog="asyncart",
        description="Versioned, event-sourced artifacts: log, browse, download and audit them.",
        epilog=(
            "example:\n  asyncart put data/ mnist --type dataset && asyncart ls\n\n"
            "serving a store over HTTP:\n"
            "  asyncart serve --store DIR --port 8080\n"
            "  asyncart token create --store DIR --project demo --write"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"asyncart {asyncart.__version__}")
    _common_options(parser, None)
    parser.set_defaults(
        store=None, token=None, json=False, quiet=False, progress=False, debug=False
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        sub = commands.add_parser(
            cmd.name,
            help=cmd.summary,
            description=cmd.summary,
            epilog=f"example:\n  {cmd.example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        cmd.arguments(sub)
        _common_options(sub, argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``asyncart`` with ``argv`` (default: the command line); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("serve", "token"):  # they run their own event loop
        from .._server._main import serve_main, token_main  # aiohttp's server: only for these

        return (serve_main if argv[0] == "serve" else token_main)(argv[1:])
    args = build_parser().parse_args(argv)
    console = Console.from_args(args)
    cmd = COMMANDS[args.command]
    try:
        return anyio.run(cmd.handler, args, console)
    except KeyboardInterrupt:
        console.error(f"interrupted: {cmd.interrupted}")
        return 130
    except BrokenPipeError:  # the reader went away (`asyncart log | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (asyncart.AsyncartError, OSError) as e:
        if args.debug:
            raise
        console.error(_one_line(e))
        return 1


def _one_line(error: BaseException) -> str:
    """The error's message on one line, with what to do next when the message lacks it."""
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, asyncart.NotFoundError) and "not found" in text:
        text += " (`asyncart ls` lists artifacts, `asyncart versions NAME` their versions)"
    elif isinstance(error, asyncart.IntegrityError) and "audit" not in text:
        text += " (run `asyncart audit` to see what is damaged)"
    elif isinstance(error, asyncart.BackendUnavailableError) and "--store" not in text:
        text += f" (check --store or ${asyncart.STORE_ENV})"
    return text
