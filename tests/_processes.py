"""Waiting on real child processes that the tests stop or kill."""

from __future__ import annotations

from pathlib import Path

import anyio


async def wait_stopped(pid: int) -> None:
    """Wait until process ``pid`` has stopped itself (SIGSTOP)."""
    with anyio.fail_after(60):
        for _ in iter(int, 1):  # forever, until the timeout
            if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "T":
                return
            await anyio.sleep(0.01)
