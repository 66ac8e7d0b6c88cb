"""Shared fixtures: a fresh store (or served store) per test, and blockbuster on every async test.

Blockbuster fails any blocking call (file I/O, sleep, ...) made by asyncart code on the event
loop, so "the loop is never blocked" is checked by every async test, not just promised.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from _pg import pg_dsn, pg_log, pg_server  # noqa: F401 (fixtures)
from _pg_s3 import pg_s3_store  # noqa: F401 (fixture)
from _s3 import s3_server, s3_url  # noqa: F401 - fixtures: a real S3 server
from _serving import Server
from blockbuster import blockbuster_ctx


@pytest.fixture(autouse=True)
def no_blocking_calls(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("allow_blocking") or not _is_async(request):
        yield
        return
    with blockbuster_ctx(["asyncart"]):
        yield


def _is_async(request: pytest.FixtureRequest) -> bool:
    import inspect

    return inspect.iscoroutinefunction(getattr(request.node, "function", None))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """``asyncart serve`` on a fresh store, in a process of its own, on a free loopback port."""
    served = Server(tmp_path / "served").start()
    yield served
    served.stop()


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A fresh, empty local store directory."""
    return str(tmp_path / "store")


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A small tree of files: a.txt, b.txt, images/1.png..3.png, nested/deep/x.bin."""
    root = tmp_path / "files"
    (root / "images").mkdir(parents=True)
    (root / "nested" / "deep").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "b.txt").write_text("beta\n")
    for i in range(1, 4):
        (root / "images" / f"{i}.png").write_bytes(bytes([i]) * (100 * i))
    (root / "nested" / "deep" / "x.bin").write_bytes(b"\x00\xff" * 5000)
    return root


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_blocking: the test may block the loop on purpose")


@pytest.fixture
def links(files: Path, tmp_path: Path) -> Path:
    """``files`` plus links of every kind, and a FIFO."""
    (files / "to-a").symlink_to(files / "a.txt")  # a link to a file: added, as the file
    (files / "to-images").symlink_to(files / "images")  # a linked directory: not followed
    (files / "broken").symlink_to(tmp_path / "nowhere")
    (files / "loop").symlink_to(files / "loop")
    os.mkfifo(files / "fifo")
    return files
