"""``bench/bench_pg_s3.py --quick`` runs against the test services and prints every row."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_pg_s3.py"
ROWS = [
    "ingest 50 x 4 KiB, direct",
    "ingest 50 x 4 KiB, server",
    "ingest 50 x 4 KiB, server --no-presign",
    "download 50 x 4 KiB, direct",
    "download 50 x 4 KiB, server",
    "download 50 x 4 KiB, server --no-presign",
    "ingest 2 x 20 MiB, direct",
    "ingest 2 x 20 MiB, server",
    "ingest 2 x 20 MiB, server --no-presign",
    "download 2 x 20 MiB, direct",
    "download 2 x 20 MiB, server",
    "download 2 x 20 MiB, server --no-presign",
    "server CPU per GB ingested through it, small, presigned",
    "server CPU per GB downloaded through it, small, presigned",
    "client CPU per GB ingested through the server, small",
    "server CPU per GB ingested through it, large, presigned",
    "server CPU per GB downloaded through it, large, presigned",
    "client CPU per GB ingested through the server, large",
    "peak RSS of the client, direct large ingest",
    "appends/s, 1 record into one stream",
    "appends/s, 1 record into a new stream each",
]


def test_quick_run_prints_every_row(pg_s3_store: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), pg_s3_store, "--quick", "--dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        env=dict(os.environ),  # the fixtures put the S3 server's AWS variables here
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    names = [line.split(" | ")[0].removeprefix("| ") for line in lines[2:]]
    assert names == ROWS
    assert "failed" not in done.stdout.lower()


def test_small_cpu_bench_runs(s3_url: str) -> None:
    """``bench/bench_s3_small_cpu.py`` at a tiny size prints both ways."""
    script = BENCH.parent / "bench_s3_small_cpu.py"
    done = subprocess.run(
        [sys.executable, str(script), s3_url, "--files", "20", "--trials", "2"],
        capture_output=True,
        text=True,
        env=dict(os.environ),  # the fixture put the S3 server's AWS variables here
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "  plain " in done.stdout and "  store " in done.stdout, done.stdout
