"""The registry of subcommands, and helpers every command uses."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncart

from .._artifact import DEFAULT_PROJECT
from ._console import Console

Handler = Callable[[argparse.Namespace, Console], Awaitable[int]]
"""A command's body: it gets the parsed arguments and the console; returns the exit code."""


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, arguments, handler, one-line summary and an example."""

    name: str
    arguments: Callable[[argparse.ArgumentParser], None]
    handler: Handler
    summary: str
    example: str
    interrupted: str


COMMANDS: dict[str, Command] = {}


def command(
    name: str,
    arguments: Callable[[argparse.ArgumentParser], None],
    summary: str,
    example: str,
    interrupted: str = "nothing was changed",
) -> Callable[[Handler], Handler]:
    """Register ``asyncart NAME``; ``interrupted`` says what Ctrl-C leaves behind."""

    def register(handler: Handler) -> Handler:
        COMMANDS[name] = Command(name, arguments, handler, summary, example, interrupted)
        return handler

    return register


def api_for(args: argparse.Namespace) -> asyncart.Api:
    """An Api on the store (and default project) the command line names."""
    return asyncart.Api(project=getattr(args, "project", None), store=args.store, token=args.token)


def project_option(parser: argparse.ArgumentParser) -> None:
    """``--project``, for commands that take artifact names."""
    parser.add_argument(
        "--project", "-p", help=f"project of NAME when NAME has none (default {DEFAULT_PROJECT})"
    )
