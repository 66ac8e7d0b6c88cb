"""Benchmark the HTTP store on loopback against the transport's own limit.

    python bench/bench_http.py [--dir DIR] [--trials N] [--quick]

In one run, on fresh stores, each measured ``--trials`` times (medians reported):

1. Upload (``Artifact.save``, hashing done before the clock starts) of the small-file set
   (5,000 x 4 KiB) to a local store and through ``asyncart serve``: the target is that the
   server is no slower than 2x the local store.
2. Upload of the large-file set (2 x 256 MiB) through the server, beside a plain aiohttp upload
   of the same bytes (streamed PUTs to a minimal aiohttp app that writes them to a file, in a
   separate process like the server): the target is >= 70% of the plain transport. ``save``
   makes the blobs durable (the server's ``syncfs``) before it commits, so the plain upload is
   also measured followed by a ``sync`` ("plain+sync"), the like-for-like baseline.
3. Download of both sets through the server (``Artifact.download``, verified), beside the local
   store's download (small) and a plain aiohttp GET of the same bytes to disk (large).

The servers run as child processes on 127.0.0.1 (``BENCH_SERVER_LOG=FILE`` keeps the access
log); every measurement starts after a ``sync``. The data directory is printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import anyio.to_thread

import asyncart
from asyncart._server import create_token

KIB, MIB = 1 << 10, 1 << 20

SINK = r"""
import os, sys
from aiohttp import web
root = sys.argv[1]

async def put(request):
    with open(os.path.join(root, request.match_info["name"]), "wb") as f:
        async for chunk in request.content.iter_chunked(1 << 20):
            f.write(chunk)
    return web.Response(status=201)

async def get(request):
    return web.FileResponse(os.path.join(root, request.match_info["name"]))

app = web.Application()
app.add_routes([web.put("/{name}", put), web.get("/{name}", get)])
ready = lambda *a: print("listening", flush=True)  # noqa: E731
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=ready)
"""


def write_files(root: Path, count: int, size: int) -> Path:
    root.mkdir(parents=True)
    for i in range(count):
        sub = root / f"d{i // 1000:03}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i:06}.bin").write_bytes(os.urandom(size))
    return root


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(cmd: list[str], marker: str) -> subprocess.Popen[str]:
    with open(os.environ.get("BENCH_SERVER_LOG", os.devnull), "a") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert marker in line, line
    return proc


def serve(store: Path) -> tuple[subprocess.Popen[str], str, str]:
    token = create_token(store, ["bench"], write=True)
    port = free_port()
    proc = start(
        [
            sys.executable,
            "-m",
            "asyncart._server",
            "serve",
            "--store",
            str(store),
            "--port",
            str(port),
        ],
        "listening on",
    )
    return proc, f"http://127.0.0.1:{port}", token


async def settle() -> None:
    """Write back dirty pages first, so one measurement does not pay for the previous one."""
    await anyio.to_thread.run_sync(os.sync)


async def timed(fn: Callable[[], Awaitable[object]]) -> float:
    await settle()
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


async def save(src: Path, name: str, store: object) -> tuple[float, asyncart.Artifact]:
    artifact = asyncart.Artifact(name, "dataset")
    await artifact.add_dir(src)  # hashing: the same work for every store, not timed
    await settle()
    start = time.perf_counter()
    saved = await artifact.save(project="bench", store=store)  # type: ignore[arg-type]
    return time.perf_counter() - start, saved


async def plain_upload(url: str, files: list[Path]) -> None:
    async def one(session: aiohttp.ClientSession, path: Path) -> None:
        async def chunks():  # type: ignore[no-untyped-def]
            with open(path, "rb") as f:
                while data := await anyio.to_thread.run_sync(f.read, 4 * MIB):
                    yield data

        headers = {"Content-Length": str(path.stat().st_size)}
        async with session.put(f"{url}/{path.name}", data=chunks(), headers=headers) as r:
            assert r.status == 201

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, p) for p in files))


async def durable(upload: Awaitable[None]) -> None:
    """An upload, then a ``sync``: what ``save`` guarantees before it commits (its ``flush``)."""
    await upload
    await anyio.to_thread.run_sync(os.sync)


async def plain_download(url: str, files: list[Path], dest: Path) -> None:
    async def one(session: aiohttp.ClientSession, path: Path) -> None:
        async with session.get(f"{url}/{path.name}") as r:
            with open(dest / path.name, "wb") as f:
                async for chunk in r.content.iter_chunked(4 * MIB):
                    await anyio.to_thread.run_sync(f.write, chunk)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, p) for p in files))


async def trial(root: Path, small: Path, large: Path, n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    server, url, token = serve(root / f"served-{n}")
    sink_dir = root / f"sink-{n}"
    sink_dir.mkdir()
    sink_port = free_port()
    sink = start([sys.executable, "-c", SINK, str(sink_dir), str(sink_port)], "listening")
    sink_url = f"http://127.0.0.1:{sink_port}"
    try:
        async with asyncart.HttpStore(url, token) as remote:
            local = root / f"local-{n}"
            out["small up local"], small_local = await save(small, "small", local)
            out["small up http"], small_remote = await save(small, "small", remote)
            out["large up http"], large_remote = await save(large, "large", remote)
            big = sorted(large.rglob("*.bin"))
            out["large up plain"] = await timed(lambda: plain_upload(sink_url, big))
            (sink_dir / big[0].name).unlink()  # the same bytes again, made durable this time
            (sink_dir / big[1].name).unlink()
            out["large up plain+sync"] = await timed(lambda: durable(plain_upload(sink_url, big)))
            d = root / f"down-{n}"
            out["small down local"] = await timed(lambda: small_local.download(d / "sl"))
            out["small down http"] = await timed(lambda: small_remote.download(d / "sh"))
            out["large down http"] = await timed(lambda: large_remote.download(d / "lh"))
            (d / "lp").mkdir(parents=True)
            out["large down plain"] = await timed(lambda: plain_download(sink_url, big, d / "lp"))
    finally:
        for proc in (server, sink):
            proc.terminate()
            proc.wait(15)
    return out


def report(results: list[dict[str, float]], small_bytes: int, large_bytes: int) -> str:
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    mbs = {k: (large_bytes if "large" in k else small_bytes) / v / 1e6 for k, v in med.items()}
    lines = [f"{k:18} {med[k]:8.3f} s  {mbs[k]:8.1f} MB/s" for k in med]
    up = med["large up plain"] / med["large up http"]
    up_durable = med["large up plain+sync"] / med["large up http"]
    down = med["large down plain"] / med["large down http"]
    small_up = med["small up http"] / med["small up local"]
    small_down = med["small down http"] / med["small down local"]
    lines += [
        _target("large upload", f"{up:.0%} of plain aiohttp", ">= 70%", up >= 0.7),
        _target("  made durable", f"{up_durable:.0%} of plain + sync", ">= 70%", up_durable >= 0.7),
        _target("large download", f"{down:.0%} of plain aiohttp", ">= 70%", down >= 0.7),
        _target("small upload", f"{small_up:.2f}x the local store", "<= 2x", small_up <= 2),
        _target("small download", f"{small_down:.2f}x the local store", "<= 2x", small_down <= 2),
    ]
    return "\n".join(lines)


def _target(what: str, got: str, target: str, ok: bool) -> str:
    return f"{what + ':':16}{got} (target {target}): {'ok' if ok else 'MISSED'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="where to put the data (default: a new temp directory)")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one trial")
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="asyncart-bench-http-"))
    count, large_size = (200, 4 * MIB) if args.quick else (5000, 256 * MIB)
    small = write_files(root / "small", count, 4 * KIB)
    large = write_files(root / "large", 2, large_size)
    results = [
        asyncio.run(trial(root, small, large, n)) for n in range(1 if args.quick else args.trials)
    ]
    print(report(results, count * 4 * KIB, 2 * large_size))
    print(f"data: {root} (delete it when done)")


if __name__ == "__main__":
    main()
