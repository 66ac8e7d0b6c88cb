"""Single run: a run logs an artifact, then we download it and verify every byte.

    python examples/single_run.py                  # the default store ($ASYNCART_STORE or
                                                   # ~/.local/share/asyncart)
    python examples/single_run.py --store /tmp/s   # a store directory of your choice

Run it twice: the second run logs identical content, so no new version is made; the existing
version is returned and the ``best`` alias stays on it.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import asyncart

NAME = "training-data"


def make_inputs(root: Path) -> None:
    """A small, fixed set of files: the same bytes on every run."""
    (root / "images").mkdir(parents=True)
    (root / "config.json").write_text('{"lr": 0.001, "epochs": 3}\n')
    for i in range(1, 4):
        (root / "images" / f"img{i}.png").write_bytes(bytes([i]) * (1000 * i))
    (root / "images" / "labels.csv").write_text("file,label\nimg1.png,cat\nimg2.png,dog\n")


async def main(store: str | None) -> None:
    print(f"store: {store or 'the default store'}")
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs"
        make_inputs(inputs)

        async with asyncart.init(project="demo", job_type="train", store=store) as run:
            artifact = asyncart.Artifact(NAME, "dataset", metadata={"source": "example"})
            await artifact.add_file(inputs / "config.json")  # entry "config.json"
            await artifact.add_dir(inputs / "images", name="images")  # entries "images/..."
            draft_digest = artifact.digest  # known before anything is written
            logged = await run.log_artifact(artifact, aliases=["best"])
            print(f"run {run.id} logged {logged.qualified_name}")

        print(f"  version : {logged.version}")
        print(f"  digest  : {logged.digest[:16]}... (draft digest {draft_digest[:16]}...)")
        print(f"  aliases : {', '.join(logged.aliases)}")
        print(f"  files   : {len(logged.manifest)} ({logged.size} bytes)")
        for path, entry in sorted(logged.manifest.entries.items()):
            print(f"    {path:22} {entry.size:6} bytes  {entry.digest[:12]}")
        creator = await logged.logged_by()
        if creator is not None and creator.id != run.id:
            print(
                f"  identical content: no new version; {logged.version} was made by run "
                f"{creator.id} and is returned as is"
            )
        else:
            print(f"  new version {logged.version}, made by this run")

        # Download into an empty directory, then check the bytes on disk against the manifest.
        root = await logged.download(Path(tmp) / "download")
        await logged.verify(root)
        written = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        print(f"downloaded {len(written)} files to a temp dir and verified them: {written}")

        # Anyone can read it back later by alias, outside any run.
        api = asyncart.Api(project="demo", store=store)
        best = await api.artifact(f"{NAME}:best")
        versions = await api.artifacts("dataset", NAME)
        print(f"{NAME}:best is {best.version}; the collection has {len(versions)} version(s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store", help="store directory (default: $ASYNCART_STORE or ~/.local/share/asyncart)"
    )
    asyncio.run(main(parser.parse_args().store))
