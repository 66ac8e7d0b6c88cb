"""Benchmark the HTTP store on loopback against the transport's own limit.

    python bench/bench_http.py [--dir DIR] [--trials N] [--quick]

In one run, on fresh stores, ``--trials`` times; each line pairs two measurements taken back
to back, in an order that alternates between trials. Times are medians; each ratio is the
median of the trials' ratios (the range in brackets), since this disk's speed drifts between
trials far more than within a pair.

1. Small-file set (5,000 x 4 KiB): ``Artifact.save`` (hashing done before the clock starts) to a
   local store and through ``asyncart serve``: target, the server no slower than 2x.
2. Large-file set (2 x 256 MiB), the transport: the HTTP blob store's ``put_files`` beside a
   plain aiohttp upload of the same bytes (streamed PUTs to a minimal aiohttp app that writes
   them to files, in a separate process like the server): target >= 70% of plain.
3. The same, end to end: ``Artifact.save`` through the server, which makes the blobs durable
   (the server's ``syncfs``) and commits, beside the plain upload followed by a ``sync``
   ("plain+sync"): target >= 70%.
4. Download of both sets (``Artifact.download``, verified) beside the local store's download
   (small: target <= 2x) and a plain aiohttp GET of the same bytes to disk (large: >= 70%).

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
from asyncart._backends.base import UploadItem
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


async def drafts(src: Path, name: str) -> asyncart.Artifact:
    """A draft of every file under ``src``, hashed (the same work for every store, not timed)."""
    artifact = asyncart.Artifact(name, "dataset")
    await artifact.add_dir(src)
    return artifact


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


async def pair(
    n: int,
    a: tuple[str, Callable[[], Awaitable[object]]],
    b: tuple[str, Callable[[], Awaitable[object]]],
) -> dict[str, float]:
    """Time ``a`` and ``b`` one after the other, in an order that alternates with the trial: the
    disk's state drifts, and whichever goes second would otherwise always pay for the first."""
    first, second = (a, b) if n % 2 == 0 else (b, a)
    return {first[0]: await timed(first[1]), second[0]: await timed(second[1])}


async def trial(root: Path, small: Path, large: Path, n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    served = root / f"served-{n}"
    server, url, token = serve(served)
    sink_dir = root / f"sink-{n}"
    sink_dir.mkdir()
    sink_port = free_port()
    sink = start([sys.executable, "-c", SINK, str(sink_dir), str(sink_port)], "listening")
    sink_url = f"http://127.0.0.1:{sink_port}"
    big = sorted(large.rglob("*.bin"))
    try:
        async with asyncart.HttpStore(url, token) as remote:
            small_local, small_http = await drafts(small, "small"), await drafts(small, "small")
            large_art = await drafts(large, "large")
            saved: dict[str, asyncart.Artifact] = {}

            async def save(key: str, artifact: asyncart.Artifact, store: object) -> None:
                saved[key] = await artifact.save(project="bench", store=store)  # type: ignore[arg-type]

            local = root / f"local-{n}"
            out |= await pair(
                n,
                ("small up local", lambda: save("small local", small_local, local)),
                ("small up http", lambda: save("small http", small_http, remote)),
            )
            entries = large_art.manifest.entries
            rel = [entries[p.relative_to(large).as_posix()] for p in big]
            items = [UploadItem(str(p), e.digest, e.size) for p, e in zip(big, rel, strict=True)]
            out |= await pair(
                n,
                ("large put http", lambda: remote.blobs.put_files(items)),
                ("large put plain", lambda: plain_upload(sink_url, big)),
            )
            for item in items:  # the same bytes again, end to end this time
                os.unlink(asyncart.LocalStore(served).blobs.path(item.digest))
            for path in big:
                (sink_dir / path.name).unlink()
            out |= await pair(
                n,
                ("large save http", lambda: save("large http", large_art, remote)),
                ("large put plain+sync", lambda: durable(plain_upload(sink_url, big))),
            )
            d = root / f"down-{n}"
            out |= await pair(
                n,
                ("small down local", lambda: saved["small local"].download(d / "sl")),
                ("small down http", lambda: saved["small http"].download(d / "sh")),
            )
            (d / "lp").mkdir(parents=True)
            out |= await pair(
                n,
                ("large down http", lambda: saved["large http"].download(d / "lh")),
                ("large down plain", lambda: plain_download(sink_url, big, d / "lp")),
            )
    finally:
        for proc in (server, sink):
            proc.terminate()
            proc.wait(15)
    return out


RATIOS = [  # (what, numerator, denominator, as a share of the baseline?, target)
    ("large upload", "large put plain", "large put http", True, 0.7),
    ("  end to end", "large put plain+sync", "large save http", True, 0.7),
    ("large download", "large down plain", "large down http", True, 0.7),
    ("small upload", "small up http", "small up local", False, 2.0),
    ("small download", "small down http", "small down local", False, 2.0),
]


def drop_large_copies(root: Path, n: int) -> None:
    """Delete trial ``n``'s copies of the large files (3 GB a trial): a few files, so this
    does not slow the disk down the way deleting the many small ones would."""
    for folder in root.glob(f"*-{n}"):
        for path in folder.rglob("*"):
            if path.is_file() and path.stat().st_size > MIB:
                path.unlink()


def report(results: list[dict[str, float]], small_bytes: int, large_bytes: int) -> str:
    """Medians of each time, and medians of the ratios within each trial (pairs measured
    back to back are comparable even when the disk's speed drifts between trials)."""
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    mbs = {k: (large_bytes if "large" in k else small_bytes) / v / 1e6 for k, v in med.items()}
    lines = [f"{k:21} {med[k]:8.3f} s  {mbs[k]:8.1f} MB/s" for k in med]
    for what, top, bottom, share, target in RATIOS:
        ratios = sorted(r[top] / r[bottom] for r in results)
        ratio, low, high = statistics.median(ratios), ratios[0], ratios[-1]
        if share:
            got = f"{ratio:.0%} of {top.removeprefix('large ')} ({low:.0%}-{high:.0%})"
            ok, want = ratio >= target, f">= {target:.0%}"
        else:
            got = f"{ratio:.2f}x the local store ({low:.2f}-{high:.2f})"
            ok, want = ratio <= target, f"<= {target:g}x"
        lines.append(f"{what + ':':16}{got} (target {want}): {'ok' if ok else 'MISSED'}")
    return "\n".join(lines)


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
    results = []
    for n in range(1 if args.quick else args.trials):
        results.append(asyncio.run(trial(root, small, large, n)))
        drop_large_copies(root, n)
    print(report(results, count * 4 * KIB, 2 * large_size))
    print(f"data: {root} (delete it when done)")


if __name__ == "__main__":
    main()
