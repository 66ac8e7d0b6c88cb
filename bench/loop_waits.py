"""Why the event loop's thread was off its CPU during a large commit: a split that the
machine's load does not blur as much as wall-clock heartbeat gaps.

    python bench/loop_waits.py SRC STORE

Runs ``bench_commit_phases.py SRC STORE`` (its JSON line is printed first) under
``perf record -a`` (Linux ``perf``, as root: scheduler tracepoints), then takes every time the
loop's thread left its CPU and splits it by the kernel stack it left with:

- **GIL waits**: asleep on a futex (CPython's GIL is a condition variable), until woken;
- **epoll beyond its timeout**: asleep in ``epoll_wait`` longer than the loop asked for (a
  late timer: not this process's doing);
- **runqueue waits**: woken, but waiting for a CPU (the machine's load);
- **other sleeps**: anything else (a read of the disk on the loop would show here).

Each is printed as its count, median, 99th percentile, longest, and how many were over 5 and
10 ms. Run it with ``PYTHONPATH`` set to another checkout to measure that one.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

SWITCH = re.compile(
    r"^\s*(.+?)\s+(\d+)\s+([\d.]+):\s+sched:sched_switch: .* prev_pid=(\d+) .*"
    r"prev_state=(\S+) ==> .* next_pid=(\d+)"
)
WAKEUP = re.compile(r"^\s*(.+?)\s+(\d+)\s+([\d.]+):\s+sched:sched_wakeup: .* pid=(\d+) ")
EPOLL = re.compile(
    r"^\s*(.+?)\s+(\d+)\s+([\d.]+):\s+syscalls:sys_enter_epoll_wait: .*timeout: (\S+)"
)


def record(src: str, store: str, data: Path) -> dict:
    """Run the phases benchmark under perf; its JSON result."""
    events = [
        "-e", "sched:sched_switch/call-graph=fp/",
        "-e", "sched:sched_wakeup/call-graph=no/",
        "-e", "syscalls:sys_enter_epoll_wait/call-graph=no/",
    ]  # fmt: skip
    phases = Path(__file__).with_name("bench_commit_phases.py")
    done = subprocess.run(
        ["perf", "record", "-q", "-a", *events, "-o", str(data), "--",
         sys.executable, str(phases), src, store],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def off_cpu(lines: object, pid: int) -> list[dict]:
    """Each time thread ``pid`` left its CPU: when, its state, kernel stack, the epoll
    timeout it asked for last, when it was woken and when it ran again."""
    out: list[dict] = []
    away: dict | None = None
    stack: list[str] | None = None
    timeout = 0
    for line in lines:  # type: ignore[attr-defined]
        if m := SWITCH.match(line):
            stack = None
            if int(m[4]) == pid:
                away = {"out": float(m[3]), "state": m[5], "stack": [], "timeout": timeout}
                stack = away["stack"]
            if int(m[6]) == pid and away is not None:
                away["in"] = float(m[3])
                out.append(away)
                away = None
        elif m := WAKEUP.match(line):
            stack = None
            if int(m[4]) == pid and away is not None and "woken" not in away:
                away["woken"] = float(m[3])
        elif m := EPOLL.match(line):
            stack = None
            if int(m[2]) == pid:
                value = int(m[4], 16)
                timeout = value - (1 << 64) if value >= 1 << 63 else value
        elif stack is not None and len(stack) < 6 and len(parts := line.split(None, 1)) == 2:
            stack.append(parts[1].strip())
    return out


def summary(xs: list[float]) -> str:
    if not xs:
        return "none"
    xs = sorted(xs)
    n = len(xs)
    return (
        f"{n} times, median {xs[n // 2] * 1e3:.2f} ms, p99 {xs[int(n * 0.99)] * 1e3:.2f} ms, "
        f"longest {xs[-1] * 1e3:.1f} ms; {sum(x > 0.005 for x in xs)} over 5 ms, "
        f"{sum(x > 0.01 for x in xs)} over 10 ms"
    )


def split(periods: list[dict]) -> dict[str, list[float]]:
    kinds: dict[str, list[float]] = collections.defaultdict(list)
    for p in periods:
        woken = p.get("woken", p["in"])
        asleep, stack = woken - p["out"], " ".join(p["stack"])
        kinds["runqueue waits"].append(p["in"] - woken)
        if "futex" in stack:
            kinds["GIL waits"].append(asleep)
        elif "epoll" in stack:
            kinds["epoll beyond its timeout"].append(asleep - max(p["timeout"], 0) / 1e3)
        elif p["state"] != "R":
            kinds["other sleeps"].append(asleep)
    return kinds


def main(src: str, store: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "perf.data"
        result = record(src, store, data)
        print(json.dumps(result))
        script = subprocess.Popen(
            ["perf", "script", "-i", str(data), "-F", "comm,tid,time,event,trace,ip,sym"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert script.stdout is not None
        periods = off_cpu(script.stdout, int(result["pid"]))
        script.wait()
    for kind, xs in split(periods).items():
        print(f"{kind}: {summary(xs)}")


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("loop_waits.py needs root (perf's scheduler tracepoints)")
    main(sys.argv[1], sys.argv[2])
