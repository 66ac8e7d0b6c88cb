"""One large commit (``add_dir`` + ``save``) in this process: the peak RSS of each phase, and
the event loop's stalls.

    python bench/bench_commit_phases.py SRC STORE

``SRC`` is a tree of files (``bench_scale.py`` writes one of a million tiny files; keep it and
reuse it), ``STORE`` a new local store. Prints one JSON line: the peak RSS (MiB) of each phase
(walk, hash, after-hash: the pages laid out; prepare+ask: what the store lacks; send;
after-send: the records encoded and appended), ``hwm`` (VmHWM), the times, the longest
heartbeat gap (``stall_ms``, wall clock: another busy process inflates it), the longest
single loop callback (``step_ms``), the most CPU the loop thread spent between two 1 ms
beats (``loop_cpu_ms``: code on the loop, whatever the machine's load) and the CPU time of the
longest garbage collection (``gc_ms``, in any thread: it holds the GIL, so the loop waits).
Run it with ``PYTHONPATH`` set to another checkout to measure that one.
"""

from __future__ import annotations

import gc
import json
import sys
import threading
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).parent))
import asyncart
from bench import Heartbeat

phase = ["start"]
peaks: dict[str, float] = {}
loop_cpu = [0.0]
longest_gc = [0.0]
_gc_started = threading.local()


def timed_gc(phase_name: str, info: dict) -> None:
    if phase_name == "start":
        _gc_started.at = time.thread_time()
    elif hasattr(_gc_started, "at"):
        longest_gc[0] = max(longest_gc[0], time.thread_time() - _gc_started.at)


def status(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return 0.0


def sampler() -> None:
    while phase[0] != "end":
        peaks[phase[0]] = max(peaks.get(phase[0], 0.0), status("VmRSS"))
        time.sleep(0.02)


async def cpu_beat() -> None:
    while True:
        start = time.thread_time()
        await anyio.sleep(0.001)
        loop_cpu[0] = max(loop_cpu[0], time.thread_time() - start)


def hashing(p: asyncart.Progress) -> None:
    phase[0] = "hash" if p.files_done < p.files_total else "after-hash"


def sending(p: asyncart.Progress) -> None:
    phase[0] = "send" if p.files_done < p.files_total else "after-send"


async def main(src: str, store: str) -> None:
    threading.Thread(target=sampler, daemon=True).start()
    gc.callbacks.append(timed_gc)
    heartbeat = Heartbeat()
    async with anyio.create_task_group() as tg:
        tg.start_soon(heartbeat.run)
        tg.start_soon(cpu_beat)
        await anyio.sleep(0.01)
        start = time.perf_counter()
        artifact = asyncart.Artifact("big", "dataset")
        phase[0] = "walk"
        await artifact.add_dir(src, progress=hashing)
        middle = time.perf_counter()
        phase[0] = "prepare+ask"
        saved = await artifact.save(project="p", store=store, progress=sending)
        end = time.perf_counter()
        tg.cancel_scope.cancel()
    phase[0] = "end"
    out: dict[str, object] = {k: round(v, 1) for k, v in peaks.items()}
    out |= {
        "hwm": status("VmHWM"),
        "add_dir_s": round(middle - start, 1),
        "save_s": round(end - middle, 1),
        "stall_ms": round(heartbeat.stall * 1e3, 1),
        "step_ms": round(heartbeat.longest_step * 1e3, 1),
        "loop_cpu_ms": round(loop_cpu[0] * 1e3, 1),
        "gc_ms": round(longest_gc[0] * 1e3, 1),
        "files": len(saved.manifest),
        "lib": asyncart.__file__,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
