"""Commands that edit a committed version's descriptive fields: tag."""

from __future__ import annotations

import argparse

import asyncart

from .._names import check_tag
from ._console import Console
from ._registry import api_for, command, project_option
from ._shapes import artifact_data


def _tag_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", metavar="NAME:vN", help="the version, [project/]name[:vN|:alias]")
    project_option(parser)
    parser.add_argument(
        "--add", "-a", action="append", default=[], metavar="TAG", help="a tag to add (repeat)"
    )
    parser.add_argument(
        "--remove", "-d", action="append", default=[], metavar="TAG", help="a tag to remove"
    )


@command(
    "tag",
    _tag_args,
    "add tags to a version or remove them (its files never change)",
    "asyncart tag mnist:v3 --add cleaned --remove draft",
)
async def tag(args: argparse.Namespace, console: Console) -> int:
    add, remove = [check_tag(t) for t in args.add], [check_tag(t) for t in args.remove]
    if both := set(add) & set(remove):
        raise asyncart.InvalidInputError(f"cannot both add and remove {', '.join(sorted(both))}")
    async with api_for(args) as api:
        artifact = await api.artifact(args.ref)
        if missing := [t for t in remove if t not in artifact.tags]:
            raise asyncart.NotFoundError(
                f"tag {missing[0]!r} is not on {artifact.qualified_name} "
                f"(its tags: {', '.join(artifact.tags) or 'none'})"
            )
        kept = [t for t in artifact.tags if t not in remove]
        artifact.tags = kept + [t for t in add if t not in kept]
        await artifact.save()
    human = f"{artifact.qualified_name} tags: {', '.join(artifact.tags) or 'none'}"
    console.result(human, artifact_data(artifact), ", ".join(artifact.tags))
    return 0
