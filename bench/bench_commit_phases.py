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
longest garbage collection (``gc_ms``, in any thread: it holds the GIL, so the loop waits),
and per phase and generation how many collections ran and the longest (``gcs``). ``gaps``,
per phase: the 1 ms beats, how many came over 20 ms late, the longest gap (``max``) split by
the loop thread's scheduler counters into the CPU it ran (``cpu``), the time it waited,
runnable, for a CPU (``runq``) and the rest (asleep: its timer, and waits for the GIL); the
longest such rest of any beat (``max_rest``) and the longest rest while the other threads
ran (``max_gil``: at most their CPU time, so a wait for the GIL behind running workers).
``bench/loop_waits.py`` splits every wait of the loop's thread with the kernel's help.
Run it with ``PYTHONPATH`` set to another checkout to measure that one.
"""

from __future__ import annotations

import gc
import json
import os
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
gcs: dict[str, tuple[int, float]] = {}  # phase/generation: collections, longest (CPU s)
_gc_started = threading.local()


def timed_gc(phase_name: str, info: dict) -> None:
    if phase_name == "start":
        _gc_started.at = time.thread_time()
    elif hasattr(_gc_started, "at"):
        took = time.thread_time() - _gc_started.at
        longest_gc[0] = max(longest_gc[0], took)
        key = f"{phase[0]}/gen{info['generation']}"
        n, most = gcs.get(key, (0, 0.0))
        gcs[key] = (n + 1, max(most, took))


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


gaps: dict[str, dict[str, float]] = {}


async def cpu_beat() -> None:
    """Beats of 1 ms, each gap split by the loop thread's scheduler counters into the CPU it
    ran, the time it waited for a CPU (runnable) and the rest (asleep: the timer's 1 ms, and
    waiting for the GIL); per phase, the longest gap's split and how many gaps were > 20 ms."""
    with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as counters:

        def sched() -> tuple[float, float]:
            counters.seek(0)
            ran, waited, _ = counters.read().split()
            return int(ran) / 1e9, int(waited) / 1e9

        while True:
            start, (ran, waited), used = time.perf_counter(), sched(), time.process_time()
            await anyio.sleep(0.001)
            gap = time.perf_counter() - start - 0.001
            ran2, waited2 = sched()
            others = time.process_time() - used - (ran2 - ran)  # CPU of the other threads
            loop_cpu[0] = max(loop_cpu[0], ran2 - ran)
            g = gaps.setdefault(phase[0], {"max": 0.0, "over20": 0, "beats": 0})
            g["beats"] += 1
            g["over20"] += gap > 0.02
            rest = gap - (ran2 - ran) - (waited2 - waited)
            g["max_rest"] = max(g.get("max_rest", 0.0), rest)
            g["max_gil"] = max(g.get("max_gil", 0.0), min(rest, others))
            if gap > g["max"]:
                cpu, runq = ran2 - ran, waited2 - waited
                g |= {"max": gap, "cpu": cpu, "runq": runq, "rest": gap - cpu - runq}


def _ms(key: str, value: float) -> float:
    return value if key in ("beats", "over20") else round(value * 1e3, 1)


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
        "gcs": {k: [n, round(most * 1e3, 1)] for k, (n, most) in gcs.items()},
        "gaps": {k: {m: _ms(m, v) for m, v in g.items()} for k, g in gaps.items()},
        "lib": asyncart.__file__,
        "pid": os.getpid(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
