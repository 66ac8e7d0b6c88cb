"""Where the memory of ``asyncart serve`` goes during one large served commit.

    python bench/bench_serve_rss.py --src FOLDER [--dir DIR] [--every SECONDS]

Starts ``asyncart serve`` on a new store under ``DIR`` (nothing is deleted: see the disk
trap in the rules), commits ``FOLDER`` through it in a fresh child process (``add_dir`` +
``save``, as ``bench_scale.py --only 2`` does), samples the server's resident size every
``--every`` seconds, and prints:

- the server's peak RSS (VmHWM) while the blobs were uploaded (up to the client's last
  "stored" progress line; null for fewer than 100,000 files, which print none) and after,
  while the append was validated and published;
- its RSS at each of the client's progress lines;
- the server's CPU time (user and system) over the whole run;
- the client's own result (times, peak RSS).

Write the folder once with ``bench_scale.write_tiny_files`` (16 unique bytes a file, in
folders of 1,000) and reuse it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from bench_scale import KIB, Server, say


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_mib(pid: int, field: str) -> float:
    """A ``/proc/PID/status`` size (``VmRSS``, ``VmHWM``) in MiB; NaN once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / KIB
    except FileNotFoundError:
        pass
    return float("nan")


class Sampler(threading.Thread):
    """The largest RSS of a process since the last :meth:`take`, sampled every ``every`` s."""

    def __init__(self, pid: int, every: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.done = pid, every, 0.0, threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.done.wait(self.every):
            rss = status_mib(self.pid, "VmRSS")
            with self.lock:
                self.peak = max(self.peak, rss)

    def take(self) -> float:
        with self.lock:
            peak, self.peak = self.peak, 0.0
        return max(peak, status_mib(self.pid, "VmRSS"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, required=True)
    parser.add_argument("--dir", type=Path, default=Path("/work/data/srvrss/runs"))
    parser.add_argument("--every", type=float, default=0.05)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    here = args.dir / f"{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:6]}"
    server = Server(here / "store", here.with_suffix(".log"))
    sampler = Sampler(server.proc.pid, args.every)
    sampler.start()
    job = {"kind": "commit", "src": str(args.src), "store": server.url, "name": "big"}
    script = str(Path(__file__).with_name("bench_scale.py"))
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, script, "--worker", json.dumps(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **server.env},
    )
    assert child.stdout is not None and child.stderr is not None
    upload_peak = None  # until the client's last progress line: hashing and uploads
    for line in child.stderr:
        if not line.startswith("  "):
            continue
        peak = sampler.take()
        upload_peak = max(upload_peak or 0.0, peak)
        say(f"[{time.perf_counter() - start:6.1f} s] server {peak:7.1f} MiB | {line.strip()}")
    out = child.stdout.read()
    rc = child.wait()
    append_peak = sampler.take()  # since: the append, validated and published
    hwm = status_mib(server.proc.pid, "VmHWM")
    cpu = cpu_seconds(server.proc.pid)
    sampler.done.set()
    server.stop()
    result = json.loads(out.splitlines()[-1]) if rc == 0 and out.strip() else {"error": rc}
    print(
        json.dumps(
            {
                "server_vmhwm_mib": round(hwm, 1),
                "server_cpu_s": round(cpu, 1),
                "server_peak_until_last_stored_line_mib": upload_peak and round(upload_peak, 1),
                "server_peak_after_it_mib": round(append_peak, 1),
                "client": result,
                "store": str(here / "store"),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
