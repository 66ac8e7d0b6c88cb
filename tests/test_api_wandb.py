"""Coming from W&B: the errors a W&B user's code catches as builtins keep being caught."""

from __future__ import annotations

from pathlib import Path

import pytest

import asyncart


async def test_remove_of_a_missing_path_is_a_file_not_found_error(files: Path) -> None:
    art = asyncart.Artifact("ds", "dataset")
    await art.add_file(files / "b.txt")
    with pytest.raises(FileNotFoundError, match="cannot remove 'nope.txt'"):
        art.remove("nope.txt")
    with pytest.raises(asyncart.NotFoundError):
        art.remove("dir/")
    art.remove("b.txt")  # what exists is still removed
    with pytest.raises(asyncart.MissingPathError):
        art.remove("b.txt")
