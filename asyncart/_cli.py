"""The ``asyncart`` command: a thin layer over the public API (it has no logic of its own).

Each subcommand is an ``async def NAME(args, console) -> int`` registered with
:func:`command`, next to a small function that declares its arguments. Adding one::

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
import json
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import anyio

import asyncart

from ._artifact import DEFAULT_PROJECT

Handler = Callable[[argparse.Namespace, "Console"], Awaitable[int]]


# -- output -------------------------------------------------------------------------------


class ProgressBar:
    """Draws :class:`asyncart.Progress` on one line of stderr: files, bytes, rate, ETA.

    It remembers the last ``Progress`` (``last``) even when it draws nothing, so a command can
    report totals, such as the bytes an upload actually stored.
    """

    def __init__(self, label: str, stream: TextIO, enabled: bool) -> None:
        self.label, self.stream, self.enabled = label, stream, enabled
        self.last: asyncart.Progress | None = None
        self._start = time.monotonic()
        self._drawn = 0.0

    def __call__(self, progress: asyncart.Progress) -> None:
        self.last = progress
        now = time.monotonic()
        finished = progress.files_done == progress.files_total
        if self.enabled and (finished or now - self._drawn >= 0.1):
            self._drawn = now
            self.stream.write(f"\r{self.render(progress, now - self._start)}\x1b[K")
            self.stream.flush()

    def render(self, p: asyncart.Progress, elapsed: float) -> str:
        """``label: 3/10 files, 1.0 MiB/4.0 MiB (25%), 2.0 MiB/s, ETA 2s``."""
        percent = 100 * p.bytes_done // p.bytes_total if p.bytes_total else 100
        rate = p.bytes_done / elapsed if elapsed > 0 else 0.0
        eta = f"{(p.bytes_total - p.bytes_done) / rate:.0f}s" if rate else "?"
        return (
            f"{self.label}: {p.files_done}/{p.files_total} files, "
            f"{human_bytes(p.bytes_done)}/{human_bytes(p.bytes_total)} ({percent}%), "
            f"{human_bytes(int(rate))}/s, ETA {eta}"
        )

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


@dataclass
class Console:
    """Where a command's output goes, and how much of it (``--quiet``, ``--json``)."""

    out: TextIO
    err: TextIO
    quiet: bool = False
    as_json: bool = False
    show_progress: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Console:
        tty = sys.stderr.isatty() and not (args.quiet or args.json)
        return cls(sys.stdout, sys.stderr, args.quiet, args.json, args.progress or tty)

    def result(self, human: str | None, data: Any, brief: str | None = None) -> None:
        """Print a result: ``data`` as JSON, ``brief`` when quiet, else ``human``."""
        if self.as_json:
            self.json(data)
        elif (text := brief if self.quiet else human) is not None:
            print(text, file=self.out)

    def json(self, data: Any) -> None:
        print(json.dumps(data, default=_json_default), file=self.out)

    def error(self, message: str) -> None:
        print(f"asyncart: error: {message}", file=self.err)

    @contextmanager
    def progress(self, label: str) -> Iterator[ProgressBar]:
        bar = ProgressBar(label, self.err, self.show_progress)
        try:
            yield bar
        finally:
            bar.close()


def human_bytes(n: int) -> str:
    """``999 B``, ``1.5 KiB``, ``20.0 MiB`` ..."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_time(when: datetime | None) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if when else "-"


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _json_default(value: object) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


# -- parsing values -----------------------------------------------------------------------

_AGO = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str) -> datetime:
    """A point in time: ISO 8601 (UTC unless it has an offset), ``@UNIX_SECONDS`` or ``2h`` ago."""
    if match := _AGO.fullmatch(text.strip()):
        return datetime.now(UTC) - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        if text.startswith("@"):
            return datetime.fromtimestamp(float(text[1:]), UTC)
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: use ISO 8601 (2026-11-27T19:40:00Z), @UNIX_SECONDS or 2h"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def parse_as_of(text: str) -> datetime | int:
    """``--as-of``: a seq (a plain integer) or a time (see :func:`parse_time`)."""
    return int(text) if text.isdigit() else parse_time(text)


def parse_fraction(text: str) -> float:
    """``10%`` or ``0.1`` -> 0.1."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"invalid subset {text!r}: use a percentage like 10%")
    return value


def split_name(text: str, project: str) -> tuple[str, str]:
    """``[project/]name`` -> (project, name), the project defaulting to ``project``."""
    owner, _, name = text.rpartition("/")
    return owner or project, name


# -- commands -----------------------------------------------------------------------------


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


def _api(args: argparse.Namespace) -> asyncart.Api:
    return asyncart.Api(project=getattr(args, "project", None), store=args.store, token=args.token)


def _project_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--project", "-p", help=f"project of NAME when NAME has none (default {DEFAULT_PROJECT})"
    )


def _put_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="DIR_OR_FILE", help="a directory (its files) or a file")
    parser.add_argument("name", metavar="NAME", help="artifact name, optionally project/name")
    parser.add_argument("--type", "-t", required=True, help="artifact type: dataset, model ...")
    _project_option(parser)
    parser.add_argument(
        "--alias", "-a", action="append", default=[], help="alias for the new version (repeat)"
    )
    parser.add_argument("--message", "-m", help="what this version is (its description)")


@command(
    "put",
    _put_args,
    "log a directory or file as a new version of an artifact",
    "asyncart put data/ mnist --type dataset --alias best -m 'cleaned labels'",
    "nothing was half-committed: a version is logged entirely or not at all "
    "(`asyncart versions NAME` shows which)",
)
async def put(args: argparse.Namespace, console: Console) -> int:
    started = time.monotonic()
    project, name = split_name(args.name, args.project or DEFAULT_PROJECT)
    artifact = asyncart.Artifact(name, args.type, description=args.message)
    if await anyio.Path(args.path).is_dir():
        await artifact.add_dir(args.path)
    else:
        await artifact.add_file(args.path)
    with console.progress("uploading") as bar:
        saved = await artifact.save(
            project, args.store, token=args.token, aliases=args.alias, progress=bar
        )
    stored = bar.last.bytes_done if bar.last else 0
    seconds = time.monotonic() - started
    data = {
        **_artifact_data(saved),
        "stored_bytes": stored,
        "seconds": round(seconds, 3),
    }
    human = (
        f"logged {saved.qualified_name} (aliases: {', '.join(saved.aliases)})\n"
        f"digest: {saved.digest}\n"
        f"files:  {len(saved.manifest)} ({human_bytes(saved.size)})\n"
        f"stored: {human_bytes(stored)} new (content already in the store is kept once)\n"
        f"time:   {seconds:.2f} s"
    )
    console.result(human, data, saved.qualified_name)
    return 0


def _get_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", metavar="NAME[:ALIAS]", help="[project/]name[:alias|:vN]")
    parser.add_argument("dest", metavar="DEST", nargs="?", help="default ./artifacts/NAME:vN")
    _project_option(parser)
    parser.add_argument("--verify", action="store_true", help="re-hash the files afterwards")


@command(
    "get",
    _get_args,
    "download a version of an artifact",
    "asyncart get mnist:best data/ --verify",
    "the destination may hold some of the files; run the same command again",
)
async def get(args: argparse.Namespace, console: Console) -> int:
    started = time.monotonic()
    async with _api(args) as api:
        artifact = await api.artifact(args.ref)
        with console.progress("downloading") as bar:
            root = await artifact.download(args.dest, progress=bar)
        if args.verify:
            await artifact.verify(root)
    seconds = time.monotonic() - started
    checked = "; verified" if args.verify else ""
    human = (
        f"downloaded {artifact.qualified_name} to {root}: {len(artifact.manifest)} files, "
        f"{human_bytes(artifact.size)} in {seconds:.2f} s{checked}"
    )
    data = {**_artifact_data(artifact), "dest": str(root), "verified": args.verify}
    console.result(human, data, str(root))
    return 0


def _ls_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project", metavar="PROJECT", nargs="?", help="default: every project")


@command(
    "ls", _ls_args, "list the artifacts of a project (or of every project)", "asyncart ls demo"
)
async def ls(args: argparse.Namespace, console: Console) -> int:
    async with _api(args) as api:
        projects = [args.project] if args.project else await api.projects()
        found = [c for p in projects for c in await api.artifact_collections(p)]
    if console.as_json:
        for collection in found:
            console.json(_collection_data(collection))
        return 0
    rows = [
        (
            f"{c.project}/{c.name}",
            c.type,
            str(c.versions),
            f"v{c.aliases['latest']}" if "latest" in c.aliases else "-",
            _other_aliases(c.aliases),
            format_time(c.updated),
        )
        for c in found
    ]
    headers = ("ARTIFACT", "TYPE", "VERSIONS", "LATEST", "ALIASES", "UPDATED")
    names = "\n".join(row[0] for row in rows) or None
    console.result(table(rows, headers) if rows else "no artifacts", None, names)
    return 0


def _versions_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="[project/]name")
    _project_option(parser)


@command("versions", _versions_args, "list the versions of an artifact", "asyncart versions mnist")
async def versions(args: argparse.Namespace, console: Console) -> int:
    project, name = split_name(args.name, args.project or DEFAULT_PROJECT)
    async with _api(args) as api:
        found = await api.artifact_versions(name, project)
    if not found:
        raise asyncart.NotFoundError(f"artifact {project}/{name} not found (see `asyncart ls`)")
    if console.as_json:
        for artifact in found:
            console.json(_artifact_data(artifact))
        return 0
    rows = [
        (
            a.version or "",
            format_time(a.created_at),
            a.committed_by or "",
            str(len(a.manifest)),
            human_bytes(a.size),
            ", ".join(a.aliases),
            a.digest[:12],
        )
        for a in found
    ]
    headers = ("VERSION", "CREATED", "BY", "FILES", "SIZE", "ALIASES", "DIGEST")
    console.result(table(rows, headers), None, "\n".join(a.qualified_name for a in found))
    return 0


def _show_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", metavar="NAME[:vN]", help="[project/]name[:alias|:vN]")
    _project_option(parser)


@command(
    "show",
    _show_args,
    "show a version: files, metadata, aliases and lineage",
    "asyncart show mnist:v3",
)
async def show(args: argparse.Namespace, console: Console) -> int:
    async with _api(args) as api:
        artifact = await api.artifact(args.ref)
        creator = await artifact.logged_by()
        users = await artifact.used_by()
    entries = sorted(artifact.manifest.entries.values(), key=lambda e: e.path)
    data = {
        **_artifact_data(artifact),
        "description": artifact.description,
        "metadata": artifact.metadata,
        "logged_by": _run_data(creator) if creator else None,
        "used_by": [_run_data(run) for run in users],
        "entries": [{"path": e.path, "digest": e.digest, "size": e.size} for e in entries],
    }
    lines = [
        artifact.qualified_name,
        f"type:        {artifact.type}",
        f"digest:      {artifact.digest}",
        f"created:     {format_time(artifact.created_at)} by {artifact.committed_by}",
        f"aliases:     {', '.join(artifact.aliases)}",
        f"description: {artifact.description or '-'}",
        f"metadata:    {json.dumps(artifact.metadata) if artifact.metadata else '-'}",
        f"logged by:   {_run_text(creator) if creator else 'no run (saved outside a run)'}",
        f"used by:     {', '.join(map(_run_text, users)) or 'no run'}",
        f"files:       {len(entries)} ({human_bytes(artifact.size)})",
        *(f"  {e.digest[:12]}  {human_bytes(e.size):>10}  {e.path}" for e in entries),
    ]
    console.result("\n".join(lines), data, artifact.qualified_name)
    return 0


def _diff_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", metavar="NAME:vA", help="the version to compare from")
    parser.add_argument("new", metavar="NAME:vB", help="the version to compare to")
    _project_option(parser)


@command(
    "diff",
    _diff_args,
    "list the paths added (A), removed (D) and changed (M) between two versions",
    "asyncart diff mnist:v2 mnist:v3",
)
async def diff(args: argparse.Namespace, console: Console) -> int:
    async with _api(args) as api:
        old, new = await api.artifact(args.old), await api.artifact(args.new)
    change = old.diff(new)
    marked = sorted(
        [("A", p) for p in change.added]
        + [("D", p) for p in change.removed]
        + [("M", p) for p in change.changed],
        key=lambda pair: pair[1],
    )
    lines = [f"{mark}  {path}" for mark, path in marked]
    summary = f"{old.qualified_name} -> {new.qualified_name}: {change}"
    data = {
        "from": old.qualified_name,
        "to": new.qualified_name,
        "added": list(change.added),
        "removed": list(change.removed),
        "changed": list(change.changed),
    }
    console.result("\n".join([*lines, summary]), data, "\n".join(lines) or None)
    return 0


def _alias_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", metavar="NAME:vN", help="the version, [project/]name:vN")
    parser.add_argument("alias", metavar="ALIAS", help="the alias to point at it")
    _project_option(parser)
    parser.add_argument("--remove", "-d", action="store_true", help="take the alias off instead")


@command(
    "alias",
    _alias_args,
    "point an alias at a version (moving it from another), or --remove it",
    "asyncart alias mnist:v3 production",
)
async def alias(args: argparse.Namespace, console: Console) -> int:
    async with _api(args) as api:
        artifact = await api.artifact(args.ref)
        if args.remove:
            artifact = await artifact.set_aliases(remove=[args.alias])
        else:
            artifact = await artifact.set_aliases(add=[args.alias])
    verb = "removed from" if args.remove else "now points at"
    human = (
        f"{args.alias} {verb} {artifact.qualified_name} (aliases: {', '.join(artifact.aliases)})"
    )
    console.result(human, _artifact_data(artifact), None)
    return 0


def _log_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", nargs="?", help="default: the whole project")
    _project_option(parser)
    parser.add_argument(
        "--since", type=parse_time, help="only records from TIME on: ISO 8601, @UNIX or 2h"
    )


@command(
    "log",
    _log_args,
    "the events behind an artifact (or a project), oldest first",
    "asyncart log mnist --since 2d",
)
async def log(args: argparse.Namespace, console: Console) -> int:
    project, name = (
        split_name(args.name, args.project or DEFAULT_PROJECT)
        if args.name
        else (args.project or DEFAULT_PROJECT, None)
    )
    async with _api(args) as api:
        entries = await api.history(name, project, since=args.since)
    for entry in entries:
        if console.as_json:
            console.json(_entry_data(entry))
        else:
            where = "" if name else f"  {entry.stream.removeprefix(project + '/')}"
            console.result(
                f"{entry.seq:>5}  {format_time(entry.time)}  {entry.actor}{where}  {entry.summary}",
                None,
                f"{entry.seq} {entry.kind}",
            )
    return 0


def _audit_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project", metavar="PROJECT", nargs="?", help="default: every project")
    parser.add_argument(
        "--as-of",
        type=parse_as_of,
        metavar="TIME|SEQ",
        help="replay each stream only up to TIME (ISO 8601, @UNIX, 2h) or up to seq SEQ, "
        "and show every artifact's versions and aliases at that point",
    )
    data = parser.add_mutually_exclusive_group()
    data.add_argument(
        "--read-data", action="store_true", help="also read every blob and check its bytes"
    )
    data.add_argument(
        "--read-data-subset",
        type=parse_fraction,
        metavar="N%",
        help="read a random N%% of the blobs",
    )


@command(
    "audit",
    _audit_args,
    "replay the log from scratch and verify hash chain, versions and blobs",
    "asyncart audit demo --read-data-subset 10%",
)
async def audit(args: argparse.Namespace, console: Console) -> int:
    read_data = args.read_data_subset or args.read_data
    with console.progress("reading blobs") as bar:
        report = await asyncart.audit(
            args.project,
            store=args.store,
            token=args.token,
            read_data=read_data,
            as_of=args.as_of,
            progress=bar,
        )
    lines = [str(report)]
    if args.as_of is not None:
        lines.append(f"as of {_as_of_text(args.as_of)}:")
        lines += [f"  {c}" for c in report.collections] or ["  no artifacts"]
    problems = "\n".join(str(p) for p in report.problems) or None
    console.result("\n".join(lines), _report_data(report), problems)
    return 0 if report.ok else 1


# -- JSON shapes ----------------------------------------------------------------------------


def _artifact_data(artifact: asyncart.Artifact) -> dict[str, Any]:
    return {
        "artifact": artifact.qualified_name,
        "project": artifact.project,
        "name": artifact.name,
        "type": artifact.type,
        "version": artifact.version,
        "digest": artifact.digest,
        "aliases": artifact.aliases,
        "files": len(artifact.manifest),
        "bytes": artifact.size,
        "created_at": artifact.created_at,
        "committed_by": artifact.committed_by,
    }


def _collection_data(c: asyncart.ArtifactCollection) -> dict[str, Any]:
    return {
        "project": c.project,
        "name": c.name,
        "type": c.type,
        "versions": c.versions,
        "aliases": dict(c.aliases),
        "updated": c.updated,
    }


def _entry_data(e: asyncart.LogEntry) -> dict[str, Any]:
    return {
        "stream": e.stream,
        "seq": e.seq,
        "time": e.time,
        "actor": e.actor,
        "kind": e.kind,
        "summary": e.summary,
        "data": dict(e.data),
    }


def _report_data(report: asyncart.AuditReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "streams": report.streams,
        "records": report.records,
        "versions": report.versions,
        "blobs": report.blobs,
        "blobs_read": report.blobs_read,
        "problems": [
            {"stream": p.stream, "seq": p.seq, "message": p.message} for p in report.problems
        ],
        "collections": [_collection_data(c) for c in report.collections],
    }


def _run_data(run: asyncart.RunInfo) -> dict[str, Any]:
    return {"id": run.id, "project": run.project, "group": run.group, "job_type": run.job_type}


def _run_text(run: asyncart.RunInfo) -> str:
    return f"run {run.id} ({run.job_type or 'no job type'})"


def _other_aliases(aliases: Any) -> str:
    return ", ".join(f"{a}: v{n}" for a, n in sorted(aliases.items()) if a != "latest") or "-"


def _as_of_text(as_of: datetime | int) -> str:
    return f"seq {as_of}" if isinstance(as_of, int) else format_time(as_of)


# -- the parser and main ------------------------------------------------------------------


def _common_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """Options every command takes, before or after its name (``default`` SUPPRESS after)."""
    flag: dict[str, Any] = {"action": "store_true", "default": default}
    parser.add_argument(
        "--store",
        metavar="DIR",
        default=default,
        help=f"a directory or URL (default: ${asyncart.STORE_ENV}, else ~/.local/share/asyncart)",
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
        epilog="example:\n  asyncart put data/ mnist --type dataset && asyncart ls",
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
    elif isinstance(error, asyncart.BackendUnavailableError):
        text += f" (check --store or ${asyncart.STORE_ENV})"
    return text
