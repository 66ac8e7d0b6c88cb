"""``bench/bench_serve_rss.py`` and ``bench/bench_server_append.py`` run at tiny sizes and
report what they measure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parent.parent / "bench"


def _run(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, env=os.environ
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout[done.stdout.index("{") :]))


def test_the_served_commit_reports_the_servers_peak(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(300):
        folder = src / f"d{i // 100}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:04d}.bin").write_bytes(b"%015d\n" % i)
    out = _run(
        str(BENCH / "bench_serve_rss.py"), "--src", str(src), "--dir", str(tmp_path / "runs")
    )
    assert out["client"]["files"] == 300
    assert out["server_vmhwm_mib"] >= out["server_peak_after_it_mib"] > 0
    assert out["server_peak_until_last_stored_line_mib"] is None  # no progress lines this small


def test_the_publish_in_process_reports_bytes_per_file(tmp_path: Path) -> None:
    out = _run(
        str(BENCH / "bench_server_append.py"), "--files", "3000", "--dir", str(tmp_path), "--trace"
    )
    assert out["files"] == 3000 and out["records_bytes"] > 3000 * 32
    assert out["vmhwm_mib"] >= out["rss_before_mib"] > 0
    assert out["traced_peak_per_file"] > 0
