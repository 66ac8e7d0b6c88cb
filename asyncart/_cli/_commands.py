"""Commands that write or check: put, get, alias, delete, gc, audit and copy."""

from __future__ import annotations

import argparse
import time

import anyio
import msgspec

import asyncart

from .._artifact import DEFAULT_PROJECT
from .._expiry import DRAFT_TTL, GRACE
from .._names import parse_ref
from ._console import Console, human_bytes
from ._registry import api_for, command, project_option
from ._shapes import artifact_data, as_of_text, report_data
from ._values import parse_as_of, parse_duration, parse_fraction, split_name


def _put_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", metavar="DIR_OR_FILE", nargs="?", help="a directory (its files) or a file"
    )
    parser.add_argument("name", metavar="NAME", help="artifact name, optionally project/name")
    parser.add_argument(
        "--reference",
        "-r",
        metavar="URI",
        action="append",
        default=[],
        help="add file://, http(s):// or s3:// URI as a reference, not uploaded (repeat)",
    )
    parser.add_argument(
        "--no-checksum",
        dest="checksum",
        action="store_false",
        help="do not read the references: track them by URI (and ETag)",
    )
    parser.add_argument("--type", "-t", required=True, help="artifact type: dataset, model ...")
    project_option(parser)
    parser.add_argument(
        "--alias", "-a", action="append", default=[], help="alias for the new version (repeat)"
    )
    parser.add_argument("--message", "-m", help="what this version is (its description)")


@command(
    "put",
    _put_args,
    "log a directory or file as a new version of an artifact",
    "asyncart put data/ mnist --type dataset --alias best -m 'cleaned labels'\n"
    "  asyncart put mnist --type dataset --reference s3://bucket/mnist/",
    "nothing was half-committed: a version is logged entirely or not at all "
    "(`asyncart versions NAME` shows which)",
)
async def put(args: argparse.Namespace, console: Console) -> int:
    started = time.monotonic()
    project, name = split_name(args.name, args.project or DEFAULT_PROJECT)
    artifact = asyncart.Artifact(name, args.type, description=args.message)
    if args.path is None and not args.reference:
        raise asyncart.InvalidInputError("put needs a DIR_OR_FILE or a --reference URI")
    if args.path is None:
        pass
    elif await anyio.Path(args.path).is_dir():
        with console.progress("hashing") as bar:
            await artifact.add_dir(args.path, progress=bar)
    else:
        await artifact.add_file(args.path)
    for uri in args.reference:
        await artifact.add_reference(uri, checksum=args.checksum)
    with console.progress("uploading") as bar:
        saved = await artifact.save(
            project, args.store, token=args.token, aliases=args.alias, progress=bar
        )
    stored = bar.last.bytes_done if bar.last else 0
    seconds = time.monotonic() - started
    data = {
        **artifact_data(saved),
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
    project_option(parser)
    parser.add_argument("--verify", action="store_true", help="re-hash the files afterwards")
    parser.add_argument(
        "--path-prefix", metavar="P", help="only the files whose path starts with P (as W&B)"
    )


@command(
    "get",
    _get_args,
    "download a version of an artifact",
    "asyncart get mnist:best data/ --verify",
    "the destination may hold some of the files; run the same command again",
)
async def get(args: argparse.Namespace, console: Console) -> int:
    started = time.monotonic()
    if args.verify and args.path_prefix is not None:
        raise asyncart.InvalidInputError("--verify checks every file: not with --path-prefix")
    async with api_for(args) as api:
        artifact = await api.artifact(args.ref)
        with console.progress("downloading") as bar:
            root = await artifact.download(args.dest, args.path_prefix, progress=bar)
        if args.verify:
            await artifact.verify(root)
    seconds = time.monotonic() - started
    checked = "; verified" if args.verify else ""
    what = f"{len(artifact.manifest)} files, {human_bytes(artifact.size)}"
    if args.path_prefix is not None:
        what = f"the files starting with {args.path_prefix!r}"
    human = f"downloaded {artifact.qualified_name} to {root}: {what} in {seconds:.2f} s{checked}"
    data = {**artifact_data(artifact), "dest": str(root), "verified": args.verify}
    if args.path_prefix is not None:
        data["path_prefix"] = args.path_prefix
    console.result(human, data, str(root))
    return 0


def _alias_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", metavar="NAME:vN", help="the version, [project/]name:vN")
    parser.add_argument("alias", metavar="ALIAS", help="the alias to point at it")
    project_option(parser)
    parser.add_argument("--remove", "-d", action="store_true", help="take the alias off instead")


@command(
    "alias",
    _alias_args,
    "point an alias at a version (moving it from another), or --remove it",
    "asyncart alias mnist:v3 production",
)
async def alias(args: argparse.Namespace, console: Console) -> int:
    async with api_for(args) as api:
        artifact = await api.artifact(args.ref)
        if args.remove:
            artifact = await artifact.set_aliases(remove=[args.alias])
        else:
            artifact = await artifact.set_aliases(add=[args.alias])
    verb = "removed from" if args.remove else "now points at"
    human = (
        f"{args.alias} {verb} {artifact.qualified_name} (aliases: {', '.join(artifact.aliases)})"
    )
    console.result(human, artifact_data(artifact), None)
    return 0


def _delete_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "ref", metavar="NAME:vN", help="the version, [project/]name:vN (or NAME: --collection)"
    )
    project_option(parser)
    parser.add_argument(
        "--delete-aliases", action="store_true", help="take its aliases off with it"
    )
    parser.add_argument(
        "--collection",
        action="store_true",
        help="delete the whole collection NAME: every version, alias and open draft",
    )
    parser.add_argument("--dry-run", action="store_true", help="check only; delete nothing")


@command(
    "delete",
    _delete_args,
    "delete a version (its number is never reused; `asyncart gc` reclaims its blobs)",
    "asyncart delete mnist:v3 --dry-run",
)
async def delete(args: argparse.Namespace, console: Console) -> int:
    if args.collection:
        return await _delete_collection(args, console)
    if parse_ref(args.ref).version is None:
        raise asyncart.InvalidInputError(
            f"name the version to delete as NAME:vN ({args.ref!r} names an alias)"
        )
    async with api_for(args) as api:
        artifact = await api.artifact(args.ref)
        aliases = [a for a in artifact.aliases if a != "latest"]
        data = {**artifact_data(artifact), "deleted": not args.dry_run, "dry_run": args.dry_run}
        await artifact.delete(args.delete_aliases, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    human = f"{verb} {artifact.qualified_name}" + (
        f" and its aliases {', '.join(aliases)}" if aliases else ""
    )
    console.result(human, data, artifact.qualified_name)
    return 0


async def _delete_collection(args: argparse.Namespace, console: Console) -> int:
    project, name = split_name(args.ref, args.project or DEFAULT_PROJECT)
    async with api_for(args) as api:
        was = await api.delete_collection(name, project, dry_run=args.dry_run)
    data = {
        "project": was.project,
        "name": was.name,
        "type": was.type,
        "versions": was.versions,
        "aliases": dict(was.aliases),
        "deleted": not args.dry_run,
        "dry_run": args.dry_run,
    }
    verb = "would delete" if args.dry_run else "deleted"
    human = f"{verb} the collection {project}/{name} ({was.versions} versions numbered)"
    console.result(human, data, f"{project}/{name}")
    return 0


def _gc_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "project",
        metavar="PROJECT",
        nargs="?",
        help="apply ttl, retention rules and draft expiry to this project only (default: "
        "every project); blobs are marked from every project all the same",
    )
    parser.add_argument(
        "--grace",
        type=parse_duration,
        default=GRACE,
        metavar="DURATION",
        help="keep unreferenced blobs written less than this long ago (default 1h)",
    )
    parser.add_argument(
        "--draft-ttl",
        type=_draft_ttl,
        default=DRAFT_TTL,
        metavar="DURATION",
        help="first discard pending drafts untouched this long (default 7d; 'never': keep)",
    )
    parser.add_argument("--dry-run", action="store_true", help="report only; remove nothing")


def _draft_ttl(text: str) -> float | None:
    return None if text.strip() == "never" else parse_duration(text)


@command(
    "gc",
    _gc_args,
    "remove the blobs no live version, snapshot or open draft references (every project)",
    "asyncart gc --dry-run --grace 1h",
)
async def gc(args: argparse.Namespace, console: Console) -> int:
    with console.gc_progress() as bar:
        report = await asyncart.gc(
            store=args.store,
            token=args.token,
            grace=args.grace,
            dry_run=args.dry_run,
            draft_ttl=args.draft_ttl,
            project=args.project,
            progress=bar,
        )
    verb = "would remove" if args.dry_run else "removed"
    discarded = "would discard" if args.dry_run else "discarded"
    human = (
        f"{discarded} {report.drafts_expired} expired drafts; "
        f"{verb} {report.blobs_removed} blobs ({report.bytes_removed} bytes) and "
        f"{report.leftovers_removed} crash leftovers ({report.leftover_bytes} bytes); kept "
        f"{report.blobs_kept} blobs ({report.young_kept} unreferenced but within the grace), "
        f"marked from {report.collections} collections in {report.seconds:.1f} s"
    )
    if rules := report.versions_expired + report.versions_retention:
        human += (
            f"; first {'would delete' if args.dry_run else 'deleted'} {rules} versions "
            f"({report.versions_expired} by their ttl, {report.versions_retention} by "
            "retention rules)"
        )
    if report.project is not None:
        human += f"; rules and draft expiry applied to project {report.project} only"
    console.result(human, msgspec.structs.asdict(report))
    return 0


def _discard_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the artifact, [project/]name")
    project_option(parser)
    parser.add_argument(
        "--distributed-id", required=True, metavar="ID", help="whose pending version to discard"
    )


@command(
    "discard",
    _discard_args,
    "discard a pending distributed version (nothing committed; a later upsert starts anew)",
    "asyncart discard shards --distributed-id exp-1",
)
async def discard(args: argparse.Namespace, console: Console) -> int:
    project, name = split_name(args.name, args.project)
    async with api_for(args) as api:
        draft = await api.discard_artifact(name, args.distributed_id, project)
    data = {"project": project, "name": name, "distributed_id": args.distributed_id}
    console.result(
        f"discarded the pending {project}/{name} of {args.distributed_id}",
        {**data, "draft": draft},
        None,
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
    with console.audit_progress() as bar:
        report = await asyncart.audit(
            args.project,
            store=args.store,
            token=args.token,
            read_data=read_data,
            as_of=args.as_of,
            progress=bar.read,
            stream_progress=bar.checked,
        )
    lines = [str(report)]
    if args.as_of is not None:
        lines.append(f"as of {as_of_text(args.as_of)}:")
        lines += [f"  {c}" for c in report.collections] or ["  no artifacts"]
    problems = "\n".join(str(p) for p in report.problems) or None
    console.result("\n".join(lines), report_data(report), problems)
    return 0 if report.ok else 1


def _copy_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="the store to copy from (as --store)")
    parser.add_argument(
        "destination",
        metavar="DST",
        help="a store directory or postgresql://...?blobs=s3://BUCKET/PREFIX (made if missing)",
    )
    parser.add_argument("--project", "-p", help="copy only this project (default: all)")


@command(
    "copy",
    _copy_args,
    "copy a store (or one project) into another, record for record; run again to resume",
    "asyncart copy ~/.local/share/asyncart 'postgresql://me@db/art?blobs=s3://bucket/art'",
    interrupted="the copy stopped between two streams' steps; run it again to resume",
)
async def copy(args: argparse.Namespace, console: Console) -> int:
    with console.copy_progress() as bar:
        report = await asyncart.copy_store(
            args.source, args.destination, project=args.project, token=args.token, progress=bar
        )
    data = {
        "streams": report.streams,
        "records": report.records,
        "blobs": report.blobs,
        "bytes": report.bytes,
    }
    console.result(str(report), data)
    return 0
