"""A small real disk for out-of-space tests: a tmpfs of a few MiB (mounting needs root)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(where: Path, size: str = "16m") -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``where``; unmount it after. Where mounting is refused the
    test is skipped, except in CI (``CI`` set), where it fails: CI runs as root and can mount."""
    where.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]
    mounted = subprocess.run(mount, capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        why = f"cannot mount a small tmpfs here: {mounted.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> None:
    """Write a file on ``disk`` until it is full."""
    with open(disk / "filler", "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * (64 << 10))
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0")
