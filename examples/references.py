"""References: log files that stay where they are; a download fetches them from there.

    python examples/references.py [--store DIR]

A directory of the local disk is added as ``file://`` references (read once to hash it: nothing
is uploaded), with one file that is stored as usual. A download fetches the references from
their URIs and checks them; when a referenced file changes afterwards, the download says so
(IntegrityError). Each execution uses a fresh temporary directory, so it can be run again and
again (each run's files are at other URIs: a new version).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import asyncart


async def main(store: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "bucket"
        (data / "images").mkdir(parents=True)
        for i in range(3):
            (data / "images" / f"{i}.png").write_bytes(bytes([i]) * 1000)
        (Path(tmp) / "labels.csv").write_text("file,label\n0.png,cat\n1.png,dog\n2.png,cat\n")

        artifact = asyncart.Artifact("pets", "dataset")
        refs = await artifact.add_reference(data.as_uri(), name="data")  # checksum=True
        await artifact.add_file(Path(tmp) / "labels.csv")  # uploaded as usual
        saved = await artifact.save(project="demo", store=store)
        print(f"logged {saved.qualified_name}: {len(refs)} references, 1 stored file")
        entry = saved.get_entry("data/images/0.png")
        print(f"  {entry.path} -> {entry.ref}")

        root = await saved.download(Path(tmp) / "out")
        print(f"downloaded {len(saved.manifest)} files to {root.name}/ (references verified)")

        (data / "images" / "1.png").write_bytes(b"changed" * 100)
        try:
            await saved.download(Path(tmp) / "again")
        except asyncart.IntegrityError as e:
            print(f"after a referenced file changed: IntegrityError: {str(e)[:60]}...")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", help="store directory (default: the default store)")
    asyncio.run(main(parser.parse_args().store))
