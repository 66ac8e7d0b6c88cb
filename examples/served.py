"""A store served over HTTP: start ``asyncart serve``, then worker processes upsert through it.

    python examples/served.py [--workers N]

The script makes a fresh store in a temporary directory, mints a write token for project
``demo`` (stored hashed in STORE/tokens.json), and starts the server on a free loopback port.
Then it runs the distributed example against ``http://127.0.0.1:PORT``: N worker processes
upsert their parts of one version, a final run commits it. Everything goes through the server;
the token reaches the workers through ``$ASYNCART_TOKEN``. Last, it downloads and verifies the
version, audits the store through the server, and stops the server gracefully (SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from distributed import NAME, finish, worker_process

import asyncart

SERVER = [sys.executable, "-m", "asyncart._server"]  # `asyncart serve` once the CLI has it


def start_server(store: Path) -> tuple[subprocess.Popen[str], str]:
    """Start a server on a free port; return it and its URL (from its first line)."""
    proc = subprocess.Popen(
        [*SERVER, "serve", "--store", str(store), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # the JSON access log; keep it with stderr=None
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, line.split()[-1]


async def check(url: str, out: Path) -> None:
    async with asyncart.Api(project="demo", store=url) as api:
        merged = await api.artifact(f"{NAME}:merged")
        await merged.verify(await merged.download(out))
        print(f"downloaded and verified {merged.qualified_name} into {out}")
    async with asyncart.HttpStore(url) as store:  # a store we open, we close
        report = await asyncart.audit("demo", store=store)
    print(f"audit through the server: {'ok' if report.ok else report}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        token = subprocess.run(
            [*SERVER, "token", "create", "--store", str(store), "--project", "demo", "--write"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        os.environ["ASYNCART_TOKEN"] = token  # inherited by the worker processes
        server, url = start_server(store)
        try:
            print(f"serving {store} at {url}")
            group = f"merge-{uuid.uuid4().hex[:12]}"
            ctx = multiprocessing.get_context("spawn")
            procs = [
                ctx.Process(target=worker_process, args=(n, group, url))
                for n in range(args.workers)
            ]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
            if failed := [n for n, p in enumerate(procs) if p.exitcode != 0]:
                raise SystemExit(f"workers {failed} failed")
            asyncio.run(finish(group, url))
            asyncio.run(check(url, Path(tmp) / "out"))
        finally:
            server.send_signal(signal.SIGTERM)  # graceful: in-flight requests finish first
            server.wait(15)


if __name__ == "__main__":
    main()
