"""While asyncart runs heavy work in worker threads (walking and hashing a tree, storing its
blobs, writing a download), the interpreter's switch interval is at most SWITCH_INTERVAL, so
that the loop's thread waits at most that long for the GIL each time it wakes; before and
after, it is whatever the application had (``_threads.responsive``)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import asyncart
from asyncart._threads import SWITCH_INTERVAL, responsive

DEFAULT = 0.005  # CPython's


@pytest.fixture(autouse=True)
def default_interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(DEFAULT)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def make_tree(root: Path, files: int) -> Path:
    for i in range(files):
        (root / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 3}" / f"f{i}.bin").write_bytes(f"file {i}\n".encode())
    return root


async def test_add_dir_save_and_download_run_with_the_short_interval(tmp_path: Path) -> None:
    seen: dict[str, set[float]] = {"hash": set(), "upload": set(), "download": set()}

    def noting(what: str) -> Callable[[asyncart.Progress], None]:
        return lambda _: seen[what].add(sys.getswitchinterval())

    src = make_tree(tmp_path / "src", 40)
    artifact = asyncart.Artifact("data", "dataset")
    await artifact.add_dir(src, progress=noting("hash"))
    assert sys.getswitchinterval() == DEFAULT  # put back between calls
    await artifact.save(project="p", store=tmp_path / "store", progress=noting("upload"))
    assert sys.getswitchinterval() == DEFAULT
    await artifact.download(tmp_path / "out", progress=noting("download"))
    assert sys.getswitchinterval() == DEFAULT
    assert seen == {what: {SWITCH_INTERVAL} for what in seen}


async def test_overlapping_users_share_one_change_and_the_last_puts_it_back() -> None:
    first, second = responsive(), responsive()
    await first.__aenter__()
    await second.__aenter__()
    await first.__aexit__(None, None, None)
    assert sys.getswitchinterval() == SWITCH_INTERVAL  # the second still runs
    await second.__aexit__(None, None, None)
    assert sys.getswitchinterval() == DEFAULT


async def test_an_interval_the_application_sets_meanwhile_is_kept() -> None:
    async with responsive():
        sys.setswitchinterval(0.002)
    assert sys.getswitchinterval() == 0.002


async def test_a_shorter_interval_of_the_application_is_left_alone() -> None:
    sys.setswitchinterval(0.0005)
    async with responsive():
        assert sys.getswitchinterval() == 0.0005
    assert sys.getswitchinterval() == 0.0005


async def test_it_is_put_back_after_an_error(tmp_path: Path) -> None:
    artifact = asyncart.Artifact("data", "dataset")
    with pytest.raises(asyncart.NotFoundError):
        await artifact.add_dir(tmp_path / "nowhere")
    assert sys.getswitchinterval() == DEFAULT
