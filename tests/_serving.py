"""A real ``asyncart serve`` process on a loopback port, for tests (no mocks).

Every process gets a deadline (``timeout``), and ``stop`` kills what did not exit in time, so a
failing test never leaves a server behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from asyncart._server import create_token

START_TIMEOUT = 15.0


class Server:
    """``python -m asyncart._server serve`` over a store directory (or the ``store`` URL of a
    PostgreSQL + S3 store; ``root`` then only names the server's log); restartable on one port."""

    def __init__(
        self, root: Path, *extra: str, files: int | None = None, store: str | None = None
    ) -> None:
        self.root = root
        self.store = store or str(root)
        self.extra = extra
        self.files = files  # a file-descriptor limit (soft and hard) for the server process
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root.parent / f"{root.name}-server.log"

    @property
    def url(self) -> str:
        scheme = "https" if "--tls-cert" in self.extra else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self) -> Server:
        args = ["serve", "--store", self.store, "--port", str(self.port), *self.extra]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["timeout", "-s", "KILL", "300", sys.executable, "-m", "asyncart._server", *args],
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,  # its own process group: `timeout` and the server
                preexec_fn=None if self.files is None else self._limit_files,
            )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
        line = self.proc.stdout.readline().decode() if ready else ""
        if "listening on" not in line:
            self.kill()
            raise RuntimeError(f"server did not start: {line!r}\n{self.log.read_text()[-2000:]}")
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def _limit_files(self) -> None:
        assert self.files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.files, self.files))

    @property
    def pid(self) -> int:
        """The server's own process (the child of its `timeout` guard)."""
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return int(children.split()[0])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the server process (and its `timeout` guard): no cleanup, no draining."""
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def access(self, since: int = 0) -> list[dict[str, object]]:
        """The access log's entries, from byte ``since`` of the log file on, once the log has
        been still for 0.1 s (the server writes a request's line after sending its response,
        so a client can be a step ahead of the log)."""
        size, deadline = -1, time.monotonic() + 5
        while (now := self.log_size()) != size and time.monotonic() < deadline:
            size = now
            time.sleep(0.1)
        text = self.log.read_bytes()[since:].decode()
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def log_size(self) -> int:
        return self.log.stat().st_size

    def token(self, *projects: str, write: bool = False, admin: bool = False) -> str:
        if self.store == str(self.root):
            return create_token(self.root, projects, write=write, admin=admin)
        flags = [*(f"--project={p}" for p in projects), *(["--write"] * write)]
        flags += ["--admin"] * admin
        command = [sys.executable, "-m", "asyncart._server", "token", "create"]
        done = subprocess.run(
            [*command, "--store", self.store, *flags], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


def spool_files(root: Path) -> list[str]:
    """Temp files the server holds (uploads in flight, parts kept for resuming)."""
    spool = root / "spool"
    return [str(p) for p in spool.rglob("*") if p.is_file()] if spool.exists() else []


def blob_count(root: Path) -> int:
    blobs = root / "blobs"
    return sum(1 for p in blobs.rglob("*") if p.is_file()) if blobs.exists() else 0


class Proxy:
    """A loopback TCP proxy in front of a server that misbehaves on demand, in the test's loop.

    Args:
        upstream: the server's port.
        cut_upload_after: abort a connection once it carried this many request bytes ...
        cut_download_after: ... or this many response bytes; ``cuts`` times in all.
        lose_reply_to: the start of a request line (``b"POST /v1/log/"``) whose response is
            never delivered: the server did the work, the client sees a dropped connection.
        rate: forward request bytes at most this fast (bytes/s, all connections together), to
            catch an upload midway.
        hold: (start of a request line, seconds): the first such request reaches the server
            that much later.
    """

    def __init__(
        self,
        upstream: int,
        *,
        cut_upload_after: int | None = None,
        cut_download_after: int | None = None,
        cuts: int = 1,
        lose_reply_to: bytes | None = None,
        rate: float | None = None,
        hold: tuple[bytes, float] | None = None,
    ) -> None:
        self.upstream = upstream
        self.cut_upload_after, self.cut_download_after = cut_upload_after, cut_download_after
        self.cuts, self.lose_reply_to, self.rate, self.hold = cuts, lose_reply_to, rate, hold
        self.port = 0
        self.cut = 0
        self._free_at = 0.0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            client_w.transport.abort()
            return
        lose = asyncio.Event()

        def abort() -> None:
            client_w.transport.abort()
            server_w.transport.abort()

        async def up() -> None:
            sent = 0
            while data := await client_r.read(64 << 10):
                if self.lose_reply_to and data.startswith(self.lose_reply_to):
                    self.lose_reply_to = None
                    lose.set()
                if self.hold and data.startswith(self.hold[0]):
                    delay, self.hold = self.hold[1], None
                    await asyncio.sleep(delay)
                sent += len(data)
                if self._should_cut(self.cut_upload_after, sent):
                    return abort()
                if self.rate:  # one budget for all connections: parts queue up behind each other
                    now = asyncio.get_running_loop().time()
                    self._free_at = max(self._free_at, now) + len(data) / self.rate
                    await asyncio.sleep(self._free_at - now)
                server_w.write(data)
                await server_w.drain()
            server_w.write_eof()

        async def down() -> None:
            got = 0
            while data := await server_r.read(64 << 10):
                got += len(data)
                if lose.is_set() or self._should_cut(self.cut_download_after, got):
                    return abort()
                client_w.write(data)
                await client_w.drain()
            client_w.close()

        try:
            await asyncio.gather(up(), down())
        except (ConnectionError, OSError):
            abort()

    def _should_cut(self, limit: int | None, count: int) -> bool:
        if limit is None or count <= limit or self.cut >= self.cuts:
            return False
        self.cut += 1
        return True
