"""Keeping the event loop free of long pure-Python work."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from typing import TypeVar, TypeVarTuple

import anyio.to_thread

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

HEAVY = 2_000
"""Items (entries, files) above which pure work moves to a thread: ~1.5 us each on the loop."""


async def maybe_thread(heavy: bool, fn: Callable[[*Ts], T], *args: *Ts) -> T:
    """Run ``fn`` in a worker thread when ``heavy``, else inline (a thread hop costs ~100 us)."""
    return await anyio.to_thread.run_sync(fn, *args) if heavy else fn(*args)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside (as it was after, unless another thread changed
    it meanwhile): building many small objects, none cyclic, would trigger it again and
    again for nothing."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
