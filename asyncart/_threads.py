"""Keeping the event loop free of long pure-Python work."""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
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


SWITCH_INTERVAL = 0.001
"""The interpreter's thread switch interval (seconds) while heavy work runs in worker threads:
CPython's default is 5 ms, and a thread that wants the GIL waits that long before it asks the
holder to let go. The loop's thread asks at every wake-up, so with one worker running Python
code each beat of the loop took 5-7 ms, and with two, often 10-15 (they take turns, and the
loop loses the race): a million-file commit's heartbeat gaps (``bench/bench_commit_phases.py``).
A shorter interval costs a few more switches per second, far under 1% of the work."""

_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved: float | None = None  # the interval before the first user, to put back


@contextlib.asynccontextmanager
async def responsive() -> AsyncIterator[None]:
    """While inside, the switch interval is at most :data:`SWITCH_INTERVAL` (the interpreter
    is global: nested and concurrent users share one change). The last one out puts the
    previous interval back, unless someone else changed it meanwhile."""
    global _switch_users, _switch_saved
    with _switch_lock:
        if _switch_users == 0:
            before = sys.getswitchinterval()
            if before > SWITCH_INTERVAL:
                _switch_saved = before
                sys.setswitchinterval(SWITCH_INTERVAL)
        _switch_users += 1
    try:
        yield
    finally:
        with _switch_lock:
            _switch_users -= 1
            if _switch_users == 0 and _switch_saved is not None:
                if sys.getswitchinterval() == SWITCH_INTERVAL:  # not changed by another meanwhile
                    sys.setswitchinterval(_switch_saved)
                _switch_saved = None
