"""Keeping the event loop free of long pure-Python work."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, TypeVarTuple

import anyio.to_thread

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

HEAVY = 2_000
"""Items (entries, files) above which pure work moves to a thread: ~1.5 us each on the loop."""


async def maybe_thread(heavy: bool, fn: Callable[[*Ts], T], *args: *Ts) -> T:
    """Run ``fn`` in a worker thread when ``heavy``, else inline (a thread hop costs ~100 us)."""
    return await anyio.to_thread.run_sync(fn, *args) if heavy else fn(*args)
