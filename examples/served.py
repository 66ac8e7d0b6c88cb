"""A store served over HTTP: start ``asyncart serve``, then worker processes upsert through it.

    python examples/served.py [--store DIR] [--workers N]

The script serves the store in DIR (default: a fresh temporary directory; DIR is made if it is
not there), mints a write token for project ``demo`` (stored hashed in DIR/tokens.json), and
starts the server on a free loopback port.
Then it runs the distributed example against ``http://127.0.0.1:PORT``: N worker processes
upsert their parts of one version, a final run commits it. Everything goes through the server;
the token reaches the workers through ``$ASYNCART_TOKEN``. Last, it downloads and verifies the
version, audits the store through the server, stops the server gracefully (SIGTERM) and
revokes the token it minted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from contextlib import ExitStack
from pathlib import Path

from distributed import NAME, finish, worker_process

import asyncart

ASYNCART = [sys.executable, "-m", "asyncart"]  # the `asyncart` command of this interpreter


def start_server(store: Path, log: Path) -> tuple[subprocess.Popen[str], str]:
    """Start a server on a free port; return it and its URL (from its first line). Its stderr,
    the JSON access log (or why it could not start), goes to ``log``."""
    with log.open("w") as errors:
        proc = subprocess.Popen(
            [*ASYNCART, "serve", "--store", str(store), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.wait(15)
        raise SystemExit(f"the server did not start: {log.read_text().strip()}")
    return proc, line.split()[-1]


async def check(url: str, out: Path) -> None:
    async with asyncart.Api(project="demo", store=url) as api:
        merged = await api.artifact(f"{NAME}:merged")
        await merged.verify(await merged.download(out))
        print(f"downloaded and verified {merged.qualified_name} into {out}")
    async with asyncart.HttpStore(url) as store:  # a store we open, we close
        report = await asyncart.audit("demo", store=store)
    print(f"audit through the server: {'ok' if report.ok else report}")


def asyncart_cli(*args: str) -> str:
    """Run ``asyncart ARGS``; return its output (its error, one line, ends the script)."""
    done = subprocess.run([*ASYNCART, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr.strip())
    return done.stdout


def mint_token(store: Path, note: str) -> str:
    """A write token for project ``demo``; ``note`` finds it again for the revoke."""
    create = ["token", "create", "--store", str(store), "--project", "demo", "--write"]
    return asyncart_cli(*create, "--note", note).strip()


def revoke_token(store: Path, note: str) -> None:
    listed = asyncart_cli("token", "list", "--store", str(store), "--json").splitlines()
    for grant in map(json.loads, listed):
        if grant["note"] == note:
            asyncart_cli("token", "revoke", "--store", str(store), grant["id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="the store directory to serve (default: a temporary one)")
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    args = parser.parse_args()
    with ExitStack() as cleanup:
        tmp = cleanup.enter_context(tempfile.TemporaryDirectory())
        store = Path(args.store) if args.store else Path(tmp) / "store"
        note = f"examples/served.py {uuid.uuid4().hex[:8]}"
        token = mint_token(store, note)
        cleanup.callback(revoke_token, store, note)  # a token is a credential: don't leave it
        os.environ["ASYNCART_TOKEN"] = token  # inherited by the worker processes
        server, url = start_server(store, Path(tmp) / "server.log")
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
