"""Registry links: log a model, link it into a registry collection, resolve and download it.

    python examples/registry.py                  # the default store ($ASYNCART_STORE or
                                                 # ~/.local/share/asyncart)
    python examples/registry.py --store /tmp/s   # a store directory of your choice

The registry collection ``registry/mnist-classifier`` gets a version that points at the
model's version: no file is copied, and ``registry/mnist-classifier:production`` downloads
the model's own blobs. Run it twice: linking the same model version again makes no new
registry version; the alias stays on the one there.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import asyncart


async def main(store: str | None) -> None:
    print(f"store: {store or 'the default store'}")
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.bin"
        weights.write_bytes(bytes(range(256)) * 64)

        async with asyncart.init(project="demo", job_type="train", store=store) as run:
            model = asyncart.Artifact("mnist-model", "model", metadata={"accuracy": 0.98})
            await model.add_file(weights)
            await run.log_artifact(model)
            print(f"logged {model.qualified_name}")
            linked = await run.link_artifact(
                model, "registry/mnist-classifier", aliases=["production"]
            )
            print(f"linked {linked.qualified_name} -> {linked.source_project}/{linked.source_name}")

        api = asyncart.Api(project="registry", store=store)
        production = await api.artifact("mnist-classifier:production")
        assert production.is_link and production.digest == model.digest
        root = await production.download(Path(tmp) / "download")
        assert (root / "weights.bin").read_bytes() == weights.read_bytes()
        print(
            f"resolved {production.qualified_name} (source {production.source_name}), "
            f"downloaded {production.file_count} file(s), metadata {production.metadata}"
        )
        links = [a.qualified_name for a in await model.linked_artifacts()]
        print(f"{model.qualified_name} is linked from {', '.join(links)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="store directory (default: $ASYNCART_STORE or ~/.local)")
    asyncio.run(main(parser.parse_args().store))
