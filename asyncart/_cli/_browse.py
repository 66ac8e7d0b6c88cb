"""Commands that read: ls, versions, show, diff and log."""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _quote  # what json.dumps uses

import asyncart

from .._artifact import DEFAULT_PROJECT
from .._threads import gc_paused
from ._console import Console, _json_default, column_table, format_time, human_bytes, table
from ._registry import api_for, command, project_option
from ._shapes import artifact_data, collection_data, entry_data, other_aliases, run_data, run_text
from ._values import parse_time, split_name


def _ls_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project", metavar="PROJECT", nargs="?", help="default: every project")
    parser.add_argument("--type", metavar="TYPE", help="only the artifacts of this type")


@command(
    "ls", _ls_args, "list the artifacts of a project (or of every project)", "asyncart ls demo"
)
async def ls(args: argparse.Namespace, console: Console) -> int:
    with gc_paused():  # a large store lists 100,000 rows: many small objects, none cyclic
        return await _ls(args, console)


async def _ls(args: argparse.Namespace, console: Console) -> int:
    async with api_for(args) as api:
        projects = [args.project] if args.project else await api.projects()
        if console.as_json:
            found = [c for p in projects for c in await api.artifact_collections(p, args.type)]
            console.json_lines([_collection_json(c) for c in found])
            return 0
        listed = [(p, await api._collection_rows(p, args.type)) for p in projects]
    names = [f"{project}/{name}" for project, rows in listed for name in rows.names]
    if not names:
        console.result("no artifacts" + (f" of type {args.type}" if args.type else ""), None, None)
        return 0
    if console.quiet:  # the names alone: no table to build (a large store has 100,000 rows)
        console.lines(names)
        return 0
    aliases = [a for _, rows in listed for a in rows.aliases]
    columns = [
        names,
        [t for _, rows in listed for t in rows.types],
        [str(n) for _, rows in listed for n in rows.versions],
        [f"v{a['latest']}" if "latest" in a else "-" for a in aliases],
        ["-" if len(a) == 1 and "latest" in a else other_aliases(a) for a in aliases],
        _times([t for _, rows in listed for t in rows.updated]),
    ]
    headers = ("ARTIFACT", "TYPE", "VERSIONS", "LATEST", "ALIASES", "UPDATED")
    console.result(column_table(columns, headers), None, None)
    return 0


def _times(times: list[float | None]) -> list[str]:
    """``format_time`` of each POSIX time, without a ``datetime`` for each: the text of each
    second once (a large store's artifacts share seconds), the seconds rounded as
    ``datetime.fromtimestamp`` rounds (to the microsecond, half to even; then cut)."""
    texts: dict[int, str] = {}
    out = []
    for t in times:
        if t is None or t < 0:  # none, or before 1970 (never an artifact's): the general way
            out.append(format_time(None if t is None else datetime.fromtimestamp(t, UTC)))
            continue
        second = int(t)
        if t - second > 0.999999 and round((t - second) * 1e6) >= 1_000_000:
            second += 1  # rounds up to the next second
        text = texts.get(second)
        if text is None:
            text = texts[second] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        out.append(text)
    return out


def _collection_json(c: asyncart.ArtifactCollection) -> str:
    """``json.dumps(collection_data(c))``, as ``Console.json`` prints it, without building
    the dict: one text per artifact of a large store (other values than ints and strings,
    or other keys than strings, take the general way)."""
    aliases = c.aliases
    if (
        type(c.versions) is not int
        or not all(type(name) is str and type(n) is int for name, n in aliases.items())
        or not all(type(text) is str for text in (c.project, c.name, c.type))
    ):
        return json.dumps(collection_data(c), default=_json_default)
    pairs = ", ".join([f"{_quote(name)}: {n}" for name, n in aliases.items()])
    updated = "null" if c.updated is None else _quote(_json_default(c.updated))
    return (
        f'{{"project": {_quote(c.project)}, "name": {_quote(c.name)}, '
        f'"type": {_quote(c.type)}, "versions": {c.versions}, "aliases": {{{pairs}}}, '
        f'"updated": {updated}}}'
    )


def _versions_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="[project/]name")
    project_option(parser)


@command("versions", _versions_args, "list the versions of an artifact", "asyncart versions mnist")
async def versions(args: argparse.Namespace, console: Console) -> int:
    project, name = split_name(args.name, args.project or DEFAULT_PROJECT)
    async with api_for(args) as api:
        found = (await api.artifact_versions(f"{project}/{name}"))[::-1]  # oldest first, as log
    if not found:
        raise asyncart.NotFoundError(f"artifact {project}/{name} not found")
    if console.as_json:
        for artifact in found:
            console.json(artifact_data(artifact))
        return 0
    rows = [_version_row(a) for a in found]
    headers = ("VERSION", "CREATED", "BY", "FILES", "SIZE", "ALIASES", "DIGEST")
    console.result(table(rows, headers), None, "\n".join(a.qualified_name for a in found))
    return 0


def _version_row(a: asyncart.Artifact) -> tuple[str, ...]:
    created, size = format_time(a.created_at), human_bytes(a.size)
    files, aliases = str(len(a.manifest)), ", ".join(a.aliases)
    return (a.version or "", created, a.committed_by or "", files, size, aliases, a.digest[:12])


def _show_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", metavar="NAME[:vN]", help="[project/]name[:alias|:vN]")
    project_option(parser)


@command(
    "show",
    _show_args,
    "show a version: files, metadata, aliases and lineage",
    "asyncart show mnist:v3",
)
async def show(args: argparse.Namespace, console: Console) -> int:
    async with api_for(args) as api:
        artifact = await api.artifact(args.ref)
        creator = await artifact.logged_by()
        users = await artifact.used_by()
    entries = sorted(artifact.manifest.entries.values(), key=lambda e: e.path)
    data = {
        **artifact_data(artifact),
        "description": artifact.description,
        "metadata": artifact.metadata,
        "logged_by": run_data(creator) if creator else None,
        "used_by": [run_data(run) for run in users],
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
        f"logged by:   {run_text(creator) if creator else 'no run (saved outside a run)'}",
        f"used by:     {', '.join(map(run_text, users)) or 'no run'}",
        f"files:       {len(entries)} ({human_bytes(artifact.size)})",
        *(f"  {e.digest[:12]}  {human_bytes(e.size):>10}  {e.path}" for e in entries),
    ]
    console.result("\n".join(lines), data, artifact.qualified_name)
    return 0


def _diff_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", metavar="NAME:vA", help="the version to compare from")
    parser.add_argument("new", metavar="NAME:vB", help="the version to compare to")
    project_option(parser)


@command(
    "diff",
    _diff_args,
    "list the paths added (A), removed (D) and changed (M) between two versions",
    "asyncart diff mnist:v2 mnist:v3",
)
async def diff(args: argparse.Namespace, console: Console) -> int:
    async with api_for(args) as api:
        old, new = await api.artifact(args.old), await api.artifact(args.new)
    change = await old.diff(new)
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


def _log_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", nargs="?", help="default: the whole project")
    project_option(parser)
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
    async with api_for(args) as api:
        entries = await api.history(name, project, since=args.since)
    for entry in entries:
        if console.as_json:
            console.json(entry_data(entry))
        else:
            where = "" if name else f"  {entry.stream.removeprefix(project + '/')}"
            console.result(
                f"{entry.seq:>5}  {format_time(entry.time)}  {entry.actor}{where}  {entry.summary}",
                None,
                f"{entry.seq} {entry.kind}",
            )
    return 0
