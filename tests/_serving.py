"""A real ``asyncart serve`` process on a loopback port, for tests (no mocks).

Every process gets a deadline (``timeout``), and ``stop`` kills what did not exit in time, so a
failing test never leaves a server behind.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

from asyncart._server import create_token

START_TIMEOUT = 15.0


class Server:
    """``python -m asyncart._server serve`` over a store directory; restartable on one port."""

    def __init__(self, root: Path, *extra: str) -> None:
        self.root = root
        self.extra = extra
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root.parent / f"{root.name}-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        args = ["serve", "--store", str(self.root), "--port", str(self.port), *self.extra]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["timeout", "-s", "KILL", "120", sys.executable, "-m", "asyncart._server", *args],
                stdout=subprocess.PIPE,
                stderr=log,
            )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
        line = self.proc.stdout.readline().decode() if ready else ""
        if "listening on" not in line:
            self.kill()
            raise RuntimeError(f"server did not start: {line!r}\n{self.log.read_text()[-2000:]}")
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the server (through `timeout`, which passes the signal on)."""
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def token(self, *projects: str, write: bool = False, admin: bool = False) -> str:
        return create_token(self.root, projects, write=write, admin=admin)


def spool_files(root: Path) -> list[str]:
    """Temp files the server holds (uploads in flight, parts kept for resuming)."""
    spool = root / "spool"
    return [str(p) for p in spool.rglob("*") if p.is_file()] if spool.exists() else []


def blob_count(root: Path) -> int:
    blobs = root / "blobs"
    return sum(1 for p in blobs.rglob("*") if p.is_file()) if blobs.exists() else 0


__all__ = ["Server", "blob_count", "os", "spool_files"]
