"""``bench/bench_scale.py --quick`` runs every measurement and prints its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parent.parent / "bench" / "bench_scale.py"


def test_quick_run_prints_every_row_beside_its_baseline(tmp_path: Path) -> None:
    raw = tmp_path / "raw.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--dir", str(tmp_path), "--json", str(raw)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].split("|")[1].strip() == "Measurement"
    assert not [row for row in rows if "failed" in row or "not measured" in row]
    assert not [row for row in rows if row.startswith(("| 1. files opened", "| 2. files seen"))]
    for label in (
        "1. open ds:latest",
        "1. open ds:pinned",
        "1. save of re-log #6",
        "1. bytes of log/",
        "2. commit 3,000 files, local",
        "2. commit 3,000 files, through asyncart serve",
        "2. open 3,000-file artifact",
        "2. 30-file incremental version",
        "2. diff of two such versions",
        "2. event-loop stall: diff",
        "3. asyncart ls PROJECT, 120 artifacts",
        "3. used_by() of a version used by 10 runs",
        "4. asyncart audit of the store of 6 re-logs",
        "5. 8 concurrent upserters",
    ):
        assert any(row.startswith(f"| {label}") for row in rows), label

    out = json.loads(raw.read_text())
    assert [r["files"] for r in out["opens"]["latest"]] == [300]
    assert out["opens"]["v0"][0]["version"] == "v0"
    assert out["opens"]["pinned (v1)"][0]["version"] == "v1"  # the alias is on v(K/4)
    assert out["log_bytes_many"] > out["log_bytes_one"] > 0
    assert out["commit_local"]["files"] == out["commit_served"]["files"] == 3_000
    assert out["increment_big"][0]["files"] == 3_000  # removed 10, added 10
    assert out["diff_big"][0]["paths"] == 30
    assert out["ls"][0]["lines"] == 120  # one name per artifact
    assert out["used_by"][0]["count"] == 10
    assert [r["rc"] for r in out["audit_many"] + out["audit_one"]] == [0, 0]
    contention = out["contention"][0]
    assert contention["files"] == 8  # every upserter's file is in the version
    assert contention["appends"] == 9 + contention["conflicts"]  # each conflict is a retry
