"""Commands on the files of a version: checkout."""

from __future__ import annotations

import argparse
import time

from ._console import Console, human_bytes
from ._registry import api_for, command, project_option
from ._shapes import artifact_data


def _checkout_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", metavar="NAME[:ALIAS]", help="[project/]name[:alias|:vN]")
    parser.add_argument("dest", metavar="DIR", help="the directory to make hold the version")
    project_option(parser)


@command(
    "checkout",
    _checkout_args,
    "make a directory hold exactly a version: download it, remove the files it does not have",
    "asyncart checkout mnist:best data/",
    "the directory may hold some of the files and still others; run the same command again",
)
async def checkout(args: argparse.Namespace, console: Console) -> int:
    started = time.monotonic()
    async with api_for(args) as api:
        artifact = await api.artifact(args.ref)
        with console.progress("checking out") as bar:
            root = await artifact.checkout(args.dest, progress=bar)
    seconds = time.monotonic() - started
    human = (
        f"checked out {artifact.qualified_name} in {root}: {len(artifact.manifest)} files, "
        f"{human_bytes(artifact.size)} in {seconds:.2f} s (files not in it were removed)"
    )
    data = {**artifact_data(artifact), "dest": str(root)}
    console.result(human, data, str(root))
    return 0
