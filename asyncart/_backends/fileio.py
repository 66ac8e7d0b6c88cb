"""Small-file reads shared by the local blob store and hashing."""

from __future__ import annotations

import os

SMALL = 1 << 20  # files up to this size are read whole, in one call


def read_small(path: str, limit: int) -> bytes:
    """Up to ``limit`` bytes of a small file, with raw calls (the per-file cost of an ingest)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)
