"""``asyncart link``: link a version into a registry-style collection."""

from __future__ import annotations

import argparse

from ._console import Console
from ._registry import api_for, command, project_option
from ._shapes import artifact_data


def _link_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", metavar="SOURCE", help="the version, [project/]name[:vN|:alias]")
    parser.add_argument(
        "target", metavar="TARGET", help="the collection to link it into, [project/]name"
    )
    project_option(parser)
    parser.add_argument(
        "--alias", "-a", action="append", default=[], help="alias for the link (repeat)"
    )


@command(
    "link",
    _link_args,
    "link a version into another collection (a registry): no file is copied",
    "asyncart link mnist-model:v3 registry/mnist --alias production",
)
async def link(args: argparse.Namespace, console: Console) -> int:
    async with api_for(args) as api:
        source = await api.artifact(args.ref)
        linked = await source.link(args.target, aliases=args.alias)
    human = (
        f"{linked.qualified_name} links {linked.source_project}/{linked.source_name} "
        f"(aliases: {', '.join(linked.aliases)})"
    )
    console.result(human, artifact_data(linked), linked.qualified_name)  # its "source" too
    return 0
