"""Outside a run: save an artifact directly, then read it back with the Api.

    python examples/outside_run.py [--store DIR]

Run it twice: the second save has identical content, so it returns the existing version.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import asyncart

NAME = "model-card"


async def main(store: str | None) -> None:
    print(f"store: {store or 'the default store'}")
    with tempfile.TemporaryDirectory() as tmp:
        card = Path(tmp) / "card.md"
        card.write_text("# tiny-model\n\nTrained on demo/training-data.\n")
        weights = Path(tmp) / "weights.bin"
        weights.write_bytes(bytes(range(256)) * 64)

        artifact = asyncart.Artifact(NAME, "model", description="a tiny example model")
        await artifact.add_file(card)  # entry "card.md"
        await artifact.add_file(weights, name="weights/model.bin")

        api = asyncart.Api(project="demo", store=store)
        try:
            before = await api.artifact(f"demo/{NAME}:latest")
        except asyncart.NotFoundError:
            before = None  # first run on this store

        saved = await artifact.save(project="demo", store=store, aliases=["production"])
        # Outside a run there is no run to credit: logged_by() is None.
        print(f"saved {saved.qualified_name} (logged by run: {await saved.logged_by()})")
        if before is not None and before.digest == artifact.digest:
            print(f"  identical to the latest version: no new version, {saved.version} returned")

    # The local files are gone; the Api reads the committed version from the store.
    latest = await api.artifact(f"demo/{NAME}:latest")
    print(f"demo/{NAME}:latest -> {latest.version}")
    print(f"  digest  : {latest.digest[:16]}...")
    print(f"  aliases : {', '.join(latest.aliases)}")
    print(f"  type    : {latest.type}; description: {latest.description!r}")
    print(f"  files   : {sorted(latest.manifest.entries)} ({latest.size} bytes)")
    versions = await api.artifacts("model", NAME)  # newest first, as in W&B
    print(f"  versions: {[v.version for v in versions]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store", help="store directory (default: $ASYNCART_STORE or ~/.local/share/asyncart)"
    )
    asyncio.run(main(parser.parse_args().store))
