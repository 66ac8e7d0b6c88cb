"""Incremental: change a few files of a logged version without the unchanged files on disk.

    python examples/incremental.py [--store DIR]

Logs a version with several files, deletes the local copies, then builds the next version with
``new_draft()``: removes a directory and a file, adds a new file and replaces one. Only the new
bytes are read, hashed and uploaded. Finally it logs the same content once more, which returns
the existing version instead of making a new one. Each execution makes two new versions (the
base content differs from the latest version, which is the previous execution's edit).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from pathlib import Path

import asyncart

NAME = "corpus"


def make_inputs(root: Path) -> None:
    (root / "docs").mkdir(parents=True)
    (root / "images").mkdir()
    (root / "README.txt").write_text("the corpus\n")
    (root / "labels.json").write_text('{"a": 1}\n')
    for name in ("a", "b", "c"):
        (root / "docs" / f"{name}.txt").write_text(f"document {name}\n" * 100)
    for i in range(1, 4):
        (root / "images" / f"{i}.png").write_bytes(bytes([i]) * 5000)


def counting():
    """A progress callback that remembers how many files were uploaded."""
    seen = {"files": 0, "bytes": 0}

    def progress(p: asyncart.Progress) -> None:
        seen["files"], seen["bytes"] = p.files_done, p.bytes_done

    return seen, progress


def diff(old: asyncart.Artifact, new: asyncart.Artifact) -> tuple[list, list, list]:
    a, b = old.manifest.entries, new.manifest.entries
    added = sorted(set(b) - set(a))
    removed = sorted(set(a) - set(b))
    changed = sorted(p for p in set(a) & set(b) if a[p].digest != b[p].digest)
    return added, removed, changed


async def main(store: str | None) -> None:
    print(f"store: {store or 'the default store'}")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        make_inputs(src)

        async with asyncart.init(project="demo", job_type="prepare", store=store) as run:
            # 1. A version with several files.
            artifact = asyncart.Artifact(NAME, "dataset")
            await artifact.add_dir(src)
            uploaded, progress = counting()
            base = await run.log_artifact(artifact, progress=progress)
            print(
                f"logged {base.qualified_name}: {len(base.manifest)} files, "
                f"digest {base.digest[:16]}..., uploaded {uploaded['files']} new blobs"
            )
            print(f"  files: {sorted(base.manifest.entries)}")

            # 2. The original files are gone from disk.
            shutil.rmtree(src)
            print(f"deleted the local copies ({src} exists: {src.exists()})")

            # 3. The next version: only the changes are described, and only new bytes are read.
            edits = Path(tmp) / "edits"
            edits.mkdir()
            (edits / "notes.txt").write_text("new in this version\n")
            (edits / "a.txt").write_text("document a, second edition\n")

            draft = base.new_draft()
            draft.remove("images/")  # a directory: everything under it
            draft.remove("labels.json")  # a single file
            await draft.add_file(edits / "notes.txt")  # a new file
            try:
                await draft.add_file(edits / "a.txt", name="docs/a.txt")
            except asyncart.InvalidInputError:
                print("  (docs/a.txt exists with other content: replacing needs overwrite=True)")
            await draft.add_file(edits / "a.txt", name="docs/a.txt", overwrite=True)
            try:
                draft.remove("no-such-file.txt")
            except asyncart.NotFoundError as e:
                print(f"  (removing a missing path is an error: {e})")

            uploaded, progress = counting()
            edited = await run.log_artifact(draft, aliases=["edited"], progress=progress)
            print(
                f"logged {edited.qualified_name}: {len(edited.manifest)} files, "
                f"digest {edited.digest[:16]}..., uploaded {uploaded['files']} new blobs"
            )
            added, removed, changed = diff(base, edited)
            print(f"  {base.version} -> {edited.version} added  : {added}")
            print(f"  {base.version} -> {edited.version} removed: {removed}")
            print(f"  {base.version} -> {edited.version} changed: {changed}")
            kept = sorted(set(base.manifest.entries) & set(edited.manifest.entries))
            unchanged = [p for p in kept if p not in changed]
            print(f"  unchanged, never re-read or re-uploaded: {unchanged}")

            # 4. Logging identical content again makes no new version.
            again = await run.log_artifact(edited.new_draft())
            print(f"logged an unchanged draft: got {again.version} back (no new version)")

        # The unchanged files came from the store, not from disk: download and verify them all.
        root = await edited.download(Path(tmp) / "download")
        await edited.verify(root)
        print(f"downloaded and verified {edited.qualified_name}: {len(edited.manifest)} files")
        print(f"  aliases: {', '.join(edited.aliases)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store", help="store directory (default: $ASYNCART_STORE or ~/.local/share/asyncart)"
    )
    asyncio.run(main(parser.parse_args().store))
