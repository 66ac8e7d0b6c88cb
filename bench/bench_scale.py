"""Benchmark how asyncart's costs grow with history, artifact size and store size (issue 9).

    python bench/bench_scale.py [--dir DIR] [--trials N] [--quick] [--only 1,2,3,4,5]
        [--relogs K] [--relog-files N] [--million N] [--streams S] [--runs R]
        [--upserters U] [--json FILE]

Every measurement is printed beside a baseline measured in the same run (medians over
``--trials``; ratios against the baseline):

1. History. A 20,000-file artifact re-logged K times (default 1,000; each re-log a new
   ``Artifact``, ``add_dir`` of the whole tree, ``save``, one file changed since the last), by one
   long-lived child process that times every ``save``; beside it a store that holds one such
   log. Then, each in a fresh process: ``Api.artifact(REF)`` with its manifest for ``latest``,
   ``v0``, ``v(K/2)`` and an alias (on ``v(K/4)``), against ``latest`` of the one-log store;
   the opener's peak RSS; the ``save`` of the last re-logs against the first ones; the bytes
   of the store's ``log/`` folder (goal: at most 10 MB after 1,000 re-logs).
2. A million files (``--million``; 16 bytes of unique content each, in folders of 1,000,
   written once): commit (``add_dir`` + ``save``) to a local store and through ``asyncart
   serve`` on loopback (once each: a commit stores a million blobs), against writing the
   files; open in a fresh process against an ``os.stat`` of every file; a 30-file
   incremental version (``new_draft``, remove 10, replace 10, add 10, ``save``) and a
   ``diff`` of two such versions against the same on a 2,000-file artifact. For each, the
   peak RSS and the longest event-loop stall seen by a 1 ms heartbeat task.
3. Many streams (``--streams``, default 100,000 one-file artifacts in one project, saved by a
   few processes with many concurrent saves each, and ``--runs`` runs that use one version):
   ``asyncart ls PROJECT`` against ``ls -R`` of the store's ``log/``;
   ``Api.artifact_collections``; ``Api.history(name)`` against the same in a store of one
   artifact; ``used_by()`` of the version against ``Api.run(id)`` of one run.
4. ``asyncart audit`` of the two stores of 1 (time and peak RSS) against ``cat`` of their
   ``log/`` folders to /dev/null.
5. Contention: ``--upserters`` (default 64) concurrent runs of one group, in one process,
   each ``upsert_artifact`` of one file into the same draft, then ``finish_artifact``; wall
   time against the same with one upserter, and the conflicts the log's appends raised (each
   one a retry) and the records read from the draft's stream, counted by a log that wraps
   the ``LocalStore``'s own (in-process tasks share that store, and its log's caches).

How: every measurement runs in a fresh child process (this script with ``--worker``) that
times itself and reports its peak RSS (VmHWM); commands (``asyncart ls``, ``asyncart
audit``, ``ls -R``, ``cat``) run under a small launcher that reports their wall time and
peak RSS (``wait4``; the launcher's own size is the floor of that figure, printed). Trials are
interleaved with their baselines and write to fresh folders; nothing big is deleted (after
deleting many files this disk is slow to create them for minutes). Only public API is used,
so the same script measures the library before and after the changes of issue 9. A step
that fails shows as ``failed: ...`` in its row instead of ending the run.

``--quick`` uses tiny sizes and one trial, so that a test can run the whole script quickly.
MB = 10^6 bytes; MiB = 2^20 bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

import asyncart
from bench import (
    KIB,
    MIB,
    PER_DIR,
    Heartbeat,
    incremental_change,
    interleaved,
    markdown_table,
    med,
    peak_rss_mib,
    prepare_changes,
    sync,
    verdict,
)

PROJECT = "scale"
NAME = "ds"  # the re-logged artifact (measurement 1)
ALIAS = "pinned"
ASYNCART = [sys.executable, "-m", "asyncart"]  # the `asyncart` command of this interpreter


@dataclass(frozen=True)
class Sizes:
    relog_files: int = 20_000
    relogs: int = 1_000
    million: int = 1_000_000
    medium_files: int = 2_000  # the baseline artifact of the incremental version and the diff
    changes: int = 10  # an incremental version removes, replaces and adds this many files
    streams: int = 100_000
    runs: int = 1_000
    upserters: int = 64
    stream_procs: int = 2  # processes that save the streams, each with many saves at once
    stream_tasks: int = 32


QUICK = Sizes(
    relog_files=300,
    relogs=6,
    million=3_000,
    medium_files=200,
    streams=120,
    runs=10,
    upserters=8,
)


# -- data -----------------------------------------------------------------------------------


def tiny_content(tag: str, i: int) -> bytes:
    """16 bytes, unique per (tag, i)."""
    return f"{tag}{i:0{15 - len(tag)}d}\n".encode()


def write_tiny_files(root: Path, count: int, tag: str) -> float:
    """``count`` files of 16 unique bytes in folders of PER_DIR; seconds, a ``sync`` included."""
    start = time.perf_counter()
    folder = str(root)
    for i in range(count):
        if i % PER_DIR == 0:
            folder = os.path.join(root, f"d{i // PER_DIR:04d}")
            os.makedirs(folder)
        fd = os.open(os.path.join(folder, f"f{i:07d}.bin"), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            os.write(fd, tiny_content(tag, i))
        finally:
            os.close(fd)
        if count >= 100_000 and (i + 1) % 100_000 == 0:
            say(f"  {root.name}: {i + 1:,} of {count:,} files written")
    sync()
    return time.perf_counter() - start


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- a store that counts what its log does (measurement 5) ----------------------------------


class CountingLog:
    """Passes every call to the log it wraps; counts the appends to artifact streams (not
    run streams), the conflicts they raise and the records read from them. Anything else
    (notes, checkpoints, whatever the log offers) passes as it is, so the library sees the
    same log with or without the wrapper."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.appends = self.conflicts = self.reads = self.records_read = self.bytes_read = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def append(self, stream: str, *args: Any, **kwargs: Any) -> Any:
        counted = "/artifacts/" in stream
        self.appends += counted
        try:
            return await self._inner.append(stream, *args, **kwargs)
        except asyncart.ConflictError:
            self.conflicts += counted
            raise

    async def read(self, stream: str, *args: Any, **kwargs: Any) -> Any:
        payloads = await self._inner.read(stream, *args, **kwargs)
        if "/artifacts/" in stream:
            self.reads += 1
            self.records_read += len(payloads)
            self.bytes_read += sum(len(p) for p in payloads)
        return payloads


async def counting_store(root: str) -> tuple[Any, CountingLog]:
    """A ``LocalStore`` whose log counts (see :class:`CountingLog`), and that log.

    Preferably the ``LocalStore`` itself with its log swapped, so that the library sees the
    store it would have made; if its log cannot be replaced, a :class:`CountingStore`.
    """
    local = asyncart.LocalStore(root)
    log = CountingLog(local.log)
    try:
        local.log = log  # type: ignore[assignment]
        return local, log
    except AttributeError:
        await local.create()  # the library creates only a LocalStore, not a wrapper
        wrapper = CountingStore(local)
        return wrapper, wrapper.log


class CountingStore:
    """An ``asyncart.Store`` around a ``LocalStore``, with a :class:`CountingLog`."""

    def __init__(self, inner: asyncart.LocalStore) -> None:
        self._inner = inner
        self.log = CountingLog(inner.log)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def blobs(self) -> Any:
        return self._inner.blobs

    @property
    def location(self) -> str:
        return self._inner.location

    def held(self) -> Any:
        return self._inner.held()

    async def aclose(self) -> None:
        await self._inner.aclose()


# -- the child processes --------------------------------------------------------------------


async def with_heartbeat(job: dict, work: Callable[[], Awaitable[dict]]) -> dict:
    """Run ``work`` (it times itself) beside a heartbeat if ``job`` asks for one."""
    if not job.get("heartbeat"):
        return await work()
    heartbeat = Heartbeat()
    async with anyio.create_task_group() as tg:
        tg.start_soon(heartbeat.run)
        result = await work()
        tg.cancel_scope.cancel()
    return result | {"stall": heartbeat.stall, "longest_step": heartbeat.longest_step}


async def relog_worker(job: dict) -> dict:
    """A store with one log of the tree, then K re-logs (one file changed before each)."""
    src = Path(job["src"])
    files = sorted(src.rglob("*.bin"))
    first = asyncart.Artifact(NAME, "dataset")
    await first.add_dir(src)
    await first.save(project=PROJECT, store=job["one"], aliases=[ALIAS])
    adds, saves = [], []
    for i in range(job["relogs"]):
        if i:
            files[(i - 1) % len(files)].write_bytes(tiny_content("x", i))
        start = time.perf_counter()
        artifact = asyncart.Artifact(NAME, "dataset")
        await artifact.add_dir(src)
        middle = time.perf_counter()
        aliases = [ALIAS] if i == job["alias_at"] else []
        saved = await artifact.save(project=PROJECT, store=job["many"], aliases=aliases)
        adds.append(middle - start)
        saves.append(time.perf_counter() - middle)
        if (i + 1) % max(1, job["relogs"] // 10) == 0:
            say(f"  re-log {i + 1}/{job['relogs']}: save {saves[-1] * 1e3:.0f} ms")
    return {"adds": adds, "saves": saves, "last": saved.version, "rss_mib": peak_rss_mib()}


async def open_worker(job: dict) -> dict:
    async def work() -> dict:
        start = time.perf_counter()
        api = asyncart.Api(project=PROJECT, store=job["store"])
        artifact = await api.artifact(job["ref"])
        files = len(artifact.manifest)
        return {"seconds": time.perf_counter() - start, "files": files, "version": artifact.version}

    return await with_heartbeat(job, work) | {"rss_mib": peak_rss_mib()}


async def stat_worker(job: dict) -> dict:
    """The baseline of an open: an ``os.stat`` of every file of the tree (in a worker thread,
    so that the heartbeat sees what the machine alone does to an idle loop)."""

    def stat_all() -> int:
        count = 0
        for folder, _, names in os.walk(job["src"]):
            for name in names:
                os.stat(os.path.join(folder, name))
                count += 1
        return count

    async def work() -> dict:
        start = time.perf_counter()
        files = await anyio.to_thread.run_sync(stat_all)
        return {"seconds": time.perf_counter() - start, "files": files}

    return await with_heartbeat(job, work) | {"rss_mib": peak_rss_mib()}


class Tenths:
    """A progress callback that says when another tenth of the files is done (a commit of a
    million files takes minutes)."""

    def __init__(self, what: str) -> None:
        self.what, self.said = what, 0

    def __call__(self, p: asyncart.Progress) -> None:
        if p.files_total >= 100_000 and p.files_done * 10 >= (self.said + 1) * p.files_total:
            self.said = p.files_done * 10 // p.files_total
            say(f"  {self.what}: {p.files_done:,} of {p.files_total:,} files")


async def commit_worker(job: dict) -> dict:
    async def work() -> dict:
        start = time.perf_counter()
        artifact = asyncart.Artifact(job["name"], "dataset")
        await artifact.add_dir(job["src"], progress=Tenths("hashed"))
        middle = time.perf_counter()
        saved = await artifact.save(project=PROJECT, store=job["store"], progress=Tenths("stored"))
        end = time.perf_counter()
        return {
            "seconds": end - start,
            "add_dir": middle - start,
            "save": end - middle,
            "files": len(saved.manifest),
        }

    return await with_heartbeat(job, work) | {"rss_mib": peak_rss_mib()}


async def increment_worker(job: dict) -> dict:
    """Open latest (untimed), then one 30-file incremental version, timed."""
    changes = job["changes"]
    # a folder of its own per trial: its name is where the new files go (new/change-TRIAL)
    folder = prepare_changes(Path(job["work"]), job["trial"] + 1, changes, 16)[-1]
    api = asyncart.Api(project=PROJECT, store=job["store"])
    latest = await api.artifact(f"{job['name']}:latest")
    paths = sorted(latest.manifest.entries)[2 * changes * job["trial"] :]

    async def work() -> dict:
        saved, seconds = await incremental_change(latest, folder, paths, changes)
        return {"seconds": seconds, "version": saved.version, "files": len(saved.manifest)}

    return await with_heartbeat(job, work) | {"rss_mib": peak_rss_mib()}


async def diff_worker(job: dict) -> dict:
    """Open two versions (untimed), then diff them, timed (awaited if ``diff`` is async)."""
    api = asyncart.Api(project=PROJECT, store=job["store"])
    old, new = await api.artifact(job["old"]), await api.artifact(job["new"])

    async def work() -> dict:
        start = time.perf_counter()
        change: Any = old.diff(new)
        if inspect.isawaitable(change):
            change = await change
        paths = len(change.added) + len(change.removed) + len(change.changed)
        return {"seconds": time.perf_counter() - start, "paths": paths}

    return await with_heartbeat(job, work) | {"rss_mib": peak_rss_mib()}


async def streams_worker(job: dict) -> dict:
    """Save one-file artifacts ``s{first}`` .. ``s{last - 1}``, ``tasks`` at a time."""
    source = Path(job["work"]) / "one.txt"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(b"one file\n")
    names = iter(range(job["first"], job["last"]))
    done = 0

    async def saver() -> None:
        nonlocal done
        for i in names:  # one shared iterator: each task takes the next name
            artifact = asyncart.Artifact(f"s{i:07d}", "dataset")
            await artifact.add_file(source, name="one.txt")
            await artifact.save(project=job["project"], store=job["store"])
            done += 1
            if done % 10_000 == 0:
                say(f"  streams {job['first']}..: {done:,} saved")

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(job["tasks"]):
            tg.start_soon(saver)
    return {"seconds": time.perf_counter() - start, "saved": done}


async def runs_worker(job: dict) -> dict:
    """``runs`` runs that each use ``ref``, 32 at a time; their ids."""
    ids: list[str] = []
    pending = iter(range(job["runs"]))

    async def one_by_one() -> None:
        for _ in pending:
            async with asyncart.init(
                project=job["project"], job_type="eval", store=job["store"]
            ) as run:
                await run.use_artifact(job["ref"])
                ids.append(run.id)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(32):
            tg.start_soon(one_by_one)
    return {"seconds": time.perf_counter() - start, "ids": ids}


async def collections_worker(job: dict) -> dict:
    start = time.perf_counter()
    found = await asyncart.Api(store=job["store"]).artifact_collections(job["project"])
    return {"seconds": time.perf_counter() - start, "count": len(found), "rss_mib": peak_rss_mib()}


async def history_worker(job: dict) -> dict:
    start = time.perf_counter()
    entries = await asyncart.Api(project=job["project"], store=job["store"]).history(job["name"])
    return {
        "seconds": time.perf_counter() - start,
        "count": len(entries),
        "rss_mib": peak_rss_mib(),
    }


async def used_by_worker(job: dict) -> dict:
    """``used_by()`` of a version (opened untimed), or ``Api.run`` of one run (the baseline)."""
    api = asyncart.Api(project=job["project"], store=job["store"])
    if "run" in job:
        start = time.perf_counter()
        await api.run(job["run"])
        return {"seconds": time.perf_counter() - start, "count": 1, "rss_mib": peak_rss_mib()}
    artifact = await api.artifact(job["ref"])
    start = time.perf_counter()
    users = await artifact.used_by()
    return {"seconds": time.perf_counter() - start, "count": len(users), "rss_mib": peak_rss_mib()}


async def contention_worker(job: dict) -> dict:
    """``upserters`` runs of one group upsert a file each into one draft at once; then one
    more run finishes it. Wall time, and what the log saw."""
    store, log = await counting_store(job["store"])
    work = Path(job["work"])
    work.mkdir(parents=True)
    parts = []
    for i in range(job["upserters"]):
        (work / f"{i}.bin").write_bytes(tiny_content("u", i))
        parts.append(work / f"{i}.bin")
    group = f"g-{uuid.uuid4().hex[:8]}"

    async def upsert(path: Path) -> None:
        async with asyncart.init(project=PROJECT, group=group, store=store) as run:
            part = asyncart.Artifact("merged", "dataset")
            await part.add_file(path, name=f"parts/{path.name}")
            await run.upsert_artifact(part)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for path in parts:
            tg.start_soon(upsert, path)
    async with asyncart.init(project=PROJECT, group=group, store=store) as run:
        final = await run.finish_artifact(asyncart.Artifact("merged", "dataset"))
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "files": len(final.manifest),
        "appends": log.appends,
        "conflicts": log.conflicts,
        "reads": log.reads,
        "records_read": log.records_read,
        "bytes_read": log.bytes_read,
        "rss_mib": peak_rss_mib(),
    }


WORKERS: dict[str, Callable[[dict], Awaitable[dict]]] = {
    "relog": relog_worker,
    "open": open_worker,
    "stat": stat_worker,
    "commit": commit_worker,
    "increment": increment_worker,
    "diff": diff_worker,
    "streams": streams_worker,
    "runs": runs_worker,
    "collections": collections_worker,
    "history": history_worker,
    "used_by": used_by_worker,
    "contention": contention_worker,
}


def worker_main(job: dict) -> None:
    result = anyio.run(WORKERS[job["kind"]], job)
    print(json.dumps(result))


# -- running children -----------------------------------------------------------------------


def in_child(env: dict[str, str] | None = None, **job: Any) -> dict:
    """Run one job in a fresh Python process (this script with --worker); return its result,
    or ``{"error": LAST LINE OF ITS STDERR}``. Its stderr (progress) is passed on."""
    sync()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--worker", json.dumps(job, default=str)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None and proc.stderr is not None
    tail: deque[str] = deque(maxlen=30)
    for line in proc.stderr:  # the child writes its result only at the end
        tail.append(line)
        if line.startswith("  "):
            sys.stderr.write(line)
    out = proc.stdout.read()
    if proc.wait() != 0:
        say(f"worker {job['kind']} failed:\n{''.join(tail)}")
        return {"error": failure(tail)}
    return dict(json.loads(out.splitlines()[-1]))


def failure(tail: deque[str] | list[str]) -> str:
    lines = [line.strip() for line in tail if line.strip()]
    return (lines[-1] if lines else "no error message")[:160]


LAUNCHER = r"""
import json, os, subprocess, sys, time
with open(sys.argv[1], "w+b") as err:
    start = time.perf_counter()
    proc = subprocess.Popen(sys.argv[2:], stdout=subprocess.PIPE, stderr=err)
    lines = sum(1 for _ in proc.stdout)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err.seek(0)
    print(json.dumps({"seconds": seconds, "rss_mib": usage.ru_maxrss / 1024, "lines": lines,
                      "rc": proc.returncode, "stderr": err.read()[-4000:].decode("replace")}))
"""


def measure(cmd: list[str]) -> dict:
    """Run a command under the launcher: its wall time, peak RSS and stdout lines. (A child's
    peak RSS counts its parent's at the fork: the launcher is small, this script may not be.)"""
    sync()
    with tempfile.NamedTemporaryFile() as err:
        done = subprocess.run(
            [sys.executable, "-c", LAUNCHER, err.name, *cmd], capture_output=True, text=True
        )
    if done.returncode != 0:
        return {"error": failure(done.stderr.splitlines())}
    result = dict(json.loads(done.stdout))
    if result["rc"] != 0:
        say(f"{' '.join(cmd)} exited {result['rc']}:\n{result['stderr']}")
        result["error"] = f"exit {result['rc']}: " + failure(result["stderr"].splitlines())
    return result


def cli(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [*ASYNCART, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if done.returncode != 0:
        raise RuntimeError(f"asyncart {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


class Server:
    """``asyncart serve`` on a store, on a free loopback port, with a write token."""

    def __init__(self, store: Path, log: Path) -> None:
        self.token = cli("token", "create", "--store", str(store), "--project", PROJECT, "--write")
        self.token = self.token.strip()
        with log.open("w") as errors:
            self.proc = subprocess.Popen(
                [*ASYNCART, "serve", "--store", str(store), "--port", "0"],
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.wait(15)
            raise RuntimeError(f"the server did not start: {log.read_text().strip()}")
        self.url = line.split()[-1]
        self.env = {"ASYNCART_TOKEN": self.token}

    def peak_rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / KIB
        return float("nan")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)  # graceful: in-flight requests finish first
        self.proc.wait(30)


def du_mb(root: Path) -> float:
    """The disk use of a tree, by ``du`` (a walk in Python of millions of files is slow)."""
    done = subprocess.run(["du", "-sk", str(root)], capture_output=True, text=True)
    return int(done.stdout.split()[0]) * KIB / 1e6 if done.returncode == 0 else float("nan")


def folder_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


# -- the measurements -----------------------------------------------------------------------

Results = dict[str, Any]


def trials_of(n: int) -> Iterator[int]:
    for trial in range(n):
        say(f"  trial {trial + 1}/{n}")
        yield trial


def run_history(root: Path, s: Sizes, trials: int, out: Results, opens: bool) -> None:
    """Measurement 1 (``opens``: the fresh-process opens too; the stores are always built,
    since measurement 4 audits them)."""
    say(f"1. {s.relogs} re-logs of {s.relog_files:,} files")
    src = root / "data" / "relog"
    out["relog_data_seconds"] = write_tiny_files(src, s.relog_files, "r")
    one, many = root / "history-one", root / "history-many"
    build = in_child(
        kind="relog", src=src, one=one, many=many, relogs=s.relogs, alias_at=s.relogs // 4
    )
    out["relog"] = build
    if "error" in build:
        return
    out["log_bytes_one"] = folder_bytes(one / "log")
    out["log_bytes_many"] = folder_bytes(many / "log")
    out["blob_bytes_many"] = folder_bytes(many / "blobs")
    if not opens:
        return
    refs = {
        "latest": (many, f"{NAME}:latest"),
        "v0": (many, f"{NAME}:v0"),
        f"v{s.relogs // 2}": (many, f"{NAME}:v{s.relogs // 2}"),
        f"{ALIAS} (v{s.relogs // 4})": (many, f"{NAME}:{ALIAS}"),
        "baseline": (one, f"{NAME}:latest"),
    }
    opened: dict[str, list[dict]] = {key: [] for key in refs}
    out["opens"] = opened

    def open_step(key: str) -> Callable[[], None]:
        store, ref = refs[key]
        return lambda: opened[key].append(in_child(kind="open", store=store, ref=ref))

    for trial in trials_of(trials):
        interleaved(trial, *(open_step(key) for key in refs))


def run_audit(root: Path, trials: int, out: Results) -> None:
    """Measurement 4, on the stores of measurement 1."""
    say("4. audit")
    for key in ("one", "many"):
        out[f"audit_{key}"], out[f"cat_{key}"] = [], []
    for trial in trials_of(trials):
        for key in ("one", "many"):
            store = root / f"history-{key}"
            audit = ["audit", PROJECT, "--store", str(store), "--quiet"]
            cat = ["sh", "-c", 'find "$0" -type f -exec cat {} + > /dev/null', str(store / "log")]
            interleaved(
                trial,
                lambda audit=audit, key=key: out[f"audit_{key}"].append(
                    measure([*ASYNCART, *audit])
                ),
                lambda cat=cat, key=key: out[f"cat_{key}"].append(measure(cat)),
            )


def run_million(root: Path, s: Sizes, trials: int, out: Results) -> None:
    """Measurement 2."""
    n = s.million
    say(f"2. {n:,} files in one artifact: writing them")
    big_src, medium_src = root / "data" / "million", root / "data" / "medium"
    out["million_write_seconds"] = write_tiny_files(big_src, n, "m")
    write_tiny_files(medium_src, s.medium_files, "c")
    stores = {"big": root / "million-local", "medium": root / "medium-local"}
    say("  commit, local store")
    out["commit_local"] = in_child(
        kind="commit", src=big_src, store=stores["big"], name="big", heartbeat=True
    )
    out["commit_medium"] = in_child(
        kind="commit", src=medium_src, store=stores["medium"], name="medium", heartbeat=True
    )
    run_million_served(root, big_src, trials, out)
    for key in ("open_big", "stat_big", "increment_big", "increment_medium"):
        out[key] = []
    out["diff_big"], out["diff_medium"] = [], []
    ok = {"big": "error" not in out["commit_local"], "medium": "error" not in out["commit_medium"]}
    for trial in trials_of(trials):
        here = root / f"million-trial-{trial}"

        def increment(key: str, here: Path = here, trial: int = trial) -> None:
            if ok[key]:
                job = {"store": stores[key], "name": key, "work": here / f"changes-{key}"}
                result = in_child(
                    kind="increment", changes=s.changes, trial=trial, heartbeat=True, **job
                )
                out[f"increment_{key}"].append(result)

        def open_big() -> None:
            if ok["big"]:
                job = {"store": stores["big"], "ref": "big:latest", "heartbeat": True}
                out["open_big"].append(in_child(kind="open", **job))

        interleaved(
            trial,
            open_big,
            lambda: out["stat_big"].append(in_child(kind="stat", src=big_src, heartbeat=True)),
        )
        interleaved(trial, lambda: increment("big"), lambda: increment("medium"))
        for key in ("big", "medium"):
            done = [r for r in out[f"increment_{key}"] if "error" not in r]
            if done:
                last = int(done[-1]["version"].removeprefix("v"))
                out[f"diff_{key}"].append(
                    in_child(
                        kind="diff",
                        store=stores[key],
                        old=f"{key}:v{last - 1}",
                        new=f"{key}:v{last}",
                        heartbeat=True,
                    )
                )


def run_million_served(root: Path, src: Path, trials: int, out: Results) -> None:
    """The commit, then opens, through ``asyncart serve`` on loopback."""
    say("  commit through asyncart serve")
    out["open_served"] = []
    try:
        server = Server(root / "million-served", root / "million-served.log")
    except RuntimeError as e:
        out["commit_served"] = {"error": str(e)}
        return
    try:
        out["commit_served"] = in_child(
            env=server.env, kind="commit", src=src, store=server.url, name="big", heartbeat=True
        )
        if "error" not in out["commit_served"]:
            for _ in trials_of(trials):
                result = in_child(
                    env=server.env, kind="open", store=server.url, ref="big:latest", heartbeat=True
                )
                out["open_served"].append(result)
        out["server_rss_mib"] = server.peak_rss_mib()
    finally:
        server.stop()


def run_streams(root: Path, s: Sizes, trials: int, out: Results) -> None:
    """Measurement 3."""
    say(f"3. {s.streams:,} streams, {s.runs:,} runs")
    store = root / "streams-store"
    project = "streams"
    per = -(-s.streams // s.stream_procs)
    start = time.perf_counter()
    jobs = [
        {
            "kind": "streams",
            "store": str(store),
            "project": project,
            "first": first,
            "last": min(first + per, s.streams),
            "tasks": s.stream_tasks,
            "work": str(root / f"streams-work-{first}"),
        }
        for first in range(0, s.streams, per)
    ]
    in_child(**{**jobs[0], "last": 1})  # the first save makes the store and the project
    jobs[0]["first"] = 1
    parallel(jobs)
    out["streams_build_seconds"] = time.perf_counter() - start
    # the baseline of a lookup: the same artifact alone in a store of its own
    solo_store = root / "streams-solo-store"
    in_child(**{**jobs[0], "store": str(solo_store), "first": 0, "last": 1, "tasks": 1})
    ref = "s0000000:v0"
    runs = in_child(kind="runs", store=store, project=project, runs=s.runs, ref=ref)
    out["runs_build"] = runs
    if "error" in runs:
        return
    name = f"s{s.streams // 2:07d}"
    keys = ("ls", "ls_r", "collections", "history", "history_solo", "used_by", "run")
    for key in keys:
        out[key] = []
    log_dir = store / "log"
    for trial in trials_of(trials):
        ls = ["ls", project, "--store", str(store), "--quiet"]
        interleaved(
            trial,
            lambda ls=ls: out["ls"].append(measure([*ASYNCART, *ls])),
            lambda: out["ls_r"].append(measure(["ls", "-R", str(log_dir)])),
        )
        out["collections"].append(in_child(kind="collections", store=store, project=project))
        interleaved(
            trial,
            lambda: out["history"].append(
                in_child(kind="history", store=store, project=project, name=name)
            ),
            lambda: out["history_solo"].append(
                in_child(kind="history", store=solo_store, project=project, name="s0000000")
            ),
        )
        interleaved(
            trial,
            lambda: out["used_by"].append(
                in_child(kind="used_by", store=store, project=project, ref=ref)
            ),
            lambda: out["run"].append(
                in_child(kind="used_by", store=store, project=project, run=runs["ids"][0])
            ),
        )


def parallel(jobs: list[dict]) -> None:
    """Run worker jobs at the same time, each in its own process; raise if one fails."""
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps(job)], stdout=subprocess.DEVNULL
        )
        for job in jobs
    ]
    if any(p.wait() != 0 for p in procs):
        raise RuntimeError("a worker failed (its error is above)")


def run_contention(root: Path, s: Sizes, trials: int, out: Results) -> None:
    """Measurement 5."""
    say(f"5. {s.upserters} concurrent upserters")
    out["contention"], out["contention_one"] = [], []
    for trial in trials_of(trials):
        here = root / f"contention-{trial}"

        def contend(n: int, key: str, here: Path = here) -> None:
            result = in_child(
                kind="contention",
                store=here / f"store-{n}",
                work=here / f"parts-{n}",
                upserters=n,
            )
            out[key].append(result)

        interleaved(
            trial,
            lambda: contend(s.upserters, "contention"),
            lambda: contend(1, "contention_one"),
        )


# -- the report -----------------------------------------------------------------------------

Row = tuple[str, str, str, str, str, str]


def good(results: list[dict]) -> list[dict]:
    return [r for r in results if "error" not in r]


def errors(results: list[dict]) -> str:
    bad = [r["error"] for r in results if "error" in r]
    return f"failed: {bad[0]}" if bad else ""


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def timed_cell(results: list[dict], key: str = "seconds") -> tuple[str, float | None]:
    """``median (n=...)`` of ``key``, or the first failure."""
    done = good(results)
    if not done:
        return errors(results) or "not measured", None
    value = med([r[key] for r in done])
    note = f" ({errors(results)})" if len(done) < len(results) else ""
    return f"{ms(value)} (n={len(done)}){note}", value


def ratio_row(
    label: str,
    ours: list[dict],
    base: list[dict],
    base_label: str,
    target: str = "",
    ok: Callable[[float, float], bool] | None = None,
    key: str = "seconds",
) -> Row:
    ours_text, value = timed_cell(ours, key)
    base_text, base_value = timed_cell(base, key)
    if value is None or base_value is None:
        return (label, ours_text, f"{base_label} {base_text}", "", target, "")
    ratio = value / base_value
    judged = verdict(ok(value, ratio)) if ok else ""
    return (label, ours_text, f"{base_label} {base_text}", f"{ratio:.2f}x", target, judged)


def rss_row(label: str, ours: list[dict], base: list[dict] | None, base_label: str = "") -> Row:
    done = good(ours)
    if not done:
        return (label, errors(ours) or "not measured", "", "", "<= 500 MB", "")
    rss = max(r["rss_mib"] for r in done)
    base_done = good(base or [])
    if not base_done:
        return (label, f"{rss:,.0f} MiB", "", "", "<= 500 MB", verdict(rss * MIB <= 500e6))
    base_rss = max(r["rss_mib"] for r in base_done)
    return (
        label,
        f"{rss:,.0f} MiB",
        f"{base_label} {base_rss:,.0f} MiB",
        f"{rss / base_rss:.2f}x",
        "<= 1.5x",
        verdict(rss / base_rss <= 1.5),
    )


def stall_row(label: str, ours: list[dict], base: list[dict]) -> Row:
    done, base_done = good(ours), good(base)
    if not done:
        return (label, errors(ours) or "not measured", "", "", "<= 20 ms", "")
    stall = max(r["stall"] for r in done) * 1e3
    step = max(r["longest_step"] for r in done) * 1e3
    idle = f"idle loop during stat: {max(r['stall'] for r in base_done) * 1e3:.1f} ms"
    return (
        label,
        f"{stall:.1f} ms (longest step {step:.1f} ms, worst of {len(done)})",
        idle if base_done else "",
        "",
        "<= 20 ms",
        verdict(stall <= 20),
    )


def history_rows(out: Results, s: Sizes) -> list[Row]:
    build = out["relog"]
    k, n = s.relogs, s.relog_files
    if "error" in build:
        return [(f"1. {k} re-logs of {n:,} files", f"failed: {build['error']}", "", "", "", "")]
    rows = []
    opens = out.get("opens", {})
    if wrong := {r["files"] for results in opens.values() for r in good(results)} - {n}:
        rows.append(("1. files opened", f"{sorted(wrong)}, not {n:,}", "", "", "", "**MISS**"))
    for key, results in opens.items():
        if key != "baseline":
            rows.append(
                ratio_row(
                    f"1. open {NAME}:{key} after {k} re-logs of {n:,} files, fresh process",
                    results,
                    opens["baseline"],
                    "after 1:",
                    "<= 1.5x",
                    lambda _v, r: r <= 1.5,
                )
            )
    if opens:
        rows.append(
            rss_row(
                f"1. peak RSS of the opener of latest after {k}",
                opens["latest"],
                opens["baseline"],
                "after 1:",
            )
        )
    saves = build["saves"]
    t = max(1, min(out["trials"], (len(saves) - 1) // 2))
    late, early = saves[-t:], saves[1 : 1 + t]
    if early:
        rows.append(
            ratio_row(
                f"1. save of re-log #{k} (1 file changed; median of the last {t})",
                [{"seconds": v} for v in late],
                [{"seconds": v} for v in early],
                f"re-logs #2-#{1 + t}:",
                "<= 1.5x",
                lambda _v, r: r <= 1.5,
            )
        )
    one, many = out["log_bytes_one"], out["log_bytes_many"]
    # fewer re-logs than the goal's 1,000: what 1,000 would take at the same rate
    at_1000 = ""
    if 2 <= k < 1000:
        at_1000 = f"; at 1,000: {(one + (many - one) * 999 / (k - 1)) / 1e6:,.0f} MB"
    rows.append(
        (
            f"1. bytes of log/ after {k} re-logs",
            f"{many / 1e6:,.2f} MB ({many:,} B{at_1000})",
            f"after 1: {one / 1e6:,.2f} MB",
            f"{many / one:.1f}x",
            "<= 10 MB",
            verdict(many <= 10e6) if k >= 1000 else "",
        )
    )
    return rows


def million_rows(out: Results, s: Sizes) -> list[Row]:
    n = f"{s.million:,}"
    write = out["million_write_seconds"]
    rows = []
    for key, where in (("commit_local", "local"), ("commit_served", "through asyncart serve")):
        result = out[key]
        label = f"2. commit {n} files, {where} (add_dir + save, once)"
        if "error" in result:
            rows.append((label, f"failed: {result['error']}", "", "", "", ""))
            continue
        rows.append(
            (
                label,
                f"{ms(result['seconds'])} (add_dir {ms(result['add_dir'])}, "
                f"save {ms(result['save'])})",
                f"writing the files + sync: {ms(write)}",
                f"{result['seconds'] / write:.2f}x",
                "",
                "",
            )
        )
    rows.append(
        ratio_row(
            f"2. open {n}-file artifact, fresh process, local",
            out["open_big"],
            out["stat_big"],
            "os.stat of every file:",
            "<= 1.5 s",
            lambda v, _r: v <= 1.5,
        )
    )
    if out.get("open_served"):
        rows.append(
            ratio_row(
                f"2. open {n}-file artifact, fresh process, served",
                out["open_served"],
                out["open_big"],
                "local:",
                "<= 1.5 s",
                lambda v, _r: v <= 1.5,
            )
        )
    rows.append(
        ratio_row(
            f"2. {3 * s.changes}-file incremental version of the {n}-file artifact",
            out["increment_big"],
            out["increment_medium"],
            f"of {s.medium_files:,} files:",
            "<= 100 ms",
            lambda v, _r: v <= 0.1,
        )
    )
    rows.append(
        ratio_row(
            f"2. diff of two such versions of {n} files",
            out["diff_big"],
            out["diff_medium"],
            f"of {s.medium_files:,} files:",
            "<= 1 s",
            lambda v, _r: v <= 1.0,
        )
    )
    what = {
        "commit, local": [out["commit_local"]],
        "commit, served (client)": [out["commit_served"]],
        "open": out["open_big"],
        "incremental version": out["increment_big"],
        "diff": out["diff_big"],
    }
    for label, results in what.items():
        rows.append(stall_row(f"2. event-loop stall: {label}", results, out["stat_big"]))
    for label, results in what.items():
        rows.append(rss_row(f"2. peak RSS: {label}", results, None))
    if "server_rss_mib" in out:
        rss = out["server_rss_mib"]
        rows.append(
            (
                "2. peak RSS: the server",
                f"{rss:,.0f} MiB",
                "",
                "",
                "<= 500 MB",
                verdict(rss * MIB <= 500e6),
            )
        )
    seen = [out["commit_local"], out["commit_served"], *out["open_big"], *out["open_served"]]
    if wrong := {r["files"] for r in good(seen)} - {s.million}:
        rows.append(("2. files seen", f"{sorted(wrong)}, not {n}", "", "", "", "**MISS**"))
    return rows


def streams_rows(out: Results, s: Sizes) -> list[Row]:
    if "error" in out["runs_build"]:
        return [("3. streams", f"failed: {out['runs_build']['error']}", "", "", "", "")]
    n = f"{s.streams:,}"
    listed = good(out["ls"])
    wrong = [r["lines"] for r in listed if r["lines"] != s.streams]
    rows = [
        ratio_row(
            f"3. asyncart ls PROJECT, {n} artifacts, fresh process",
            out["ls"],
            out["ls_r"],
            "ls -R of the store's log/:",
            "<= 1 s",
            lambda v, _r: v <= 1.0 and not wrong,
        ),
        rss_row(f"3. peak RSS of asyncart ls, {n} artifacts", out["ls"], None),
        ratio_row(
            f"3. Api.artifact_collections(PROJECT), {n} artifacts",
            out["collections"],
            out["ls_r"],
            "ls -R:",
        ),
        ratio_row(
            f"3. Api.history(name) among {n} artifacts",
            out["history"],
            out["history_solo"],
            "alone in a store:",
            "flat",
        ),
        ratio_row(
            f"3. used_by() of a version used by {s.runs:,} runs",
            out["used_by"],
            out["run"],
            "Api.run(id) of one run:",
            "an index",
        ),
    ]
    if wrong:
        rows.append(
            ("3. asyncart ls listed", f"{wrong[0]} lines, not {s.streams}", "", "", "", "**MISS**")
        )
    return rows


def audit_rows(out: Results, s: Sizes) -> list[Row]:
    if "audit_many" not in out:
        return [("4. asyncart audit", "not measured: the stores of 1 failed", "", "", "", "")]
    rows = []
    for key, label in (("many", f"{s.relogs} re-logs"), ("one", "1 log")):
        audits = out[f"audit_{key}"]
        rows.append(
            ratio_row(
                f"4. asyncart audit of the store of {label} of {s.relog_files:,} files",
                audits,
                out[f"cat_{key}"],
                "cat log/ > /dev/null:",
            )
        )
        rows.append(rss_row(f"4. peak RSS of that audit ({label})", audits, None))
    return rows


def contention_rows(out: Results, s: Sizes) -> list[Row]:
    many, one = out["contention"], out["contention_one"]
    rows = [
        ratio_row(
            f"5. {s.upserters} concurrent upserters into one draft, then finish",
            many,
            one,
            "1 upserter:",
        )
    ]
    done = good(many)
    if done:
        conflicts = med([r["conflicts"] for r in done])
        appends = med([r["appends"] for r in done])
        mb = med([r["bytes_read"] for r in done]) / 1e6
        records = med([r["records_read"] for r in done])
        files_ok = all(r["files"] == s.upserters for r in done)
        rows.append(
            (
                f"5. conflict retries of {s.upserters} upserters",
                f"{conflicts:,.0f} conflicts in {appends:,.0f} appends to the draft's stream",
                f"{s.upserters + 1} appends needed; {records:,.0f} records ({mb:,.2f} MB) read",
                "",
                "re-read only what is new",
                "" if files_ok else "**MISS** (files lost)",
            )
        )
    return rows


def report(out: Results, s: Sizes, only: set[str], root: Path, elapsed: float) -> str:
    rows: list[Row] = [("Measurement", "asyncart", "baseline", "ratio", "target", "verdict")]
    if "1" in only:
        rows += history_rows(out, s)
    if "2" in only:
        rows += million_rows(out, s)
    if "3" in only:
        rows += streams_rows(out, s)
    if "4" in only:
        rows += audit_rows(out, s)
    if "5" in only:
        rows += contention_rows(out, s)
    lines = [markdown_table([tuple(r) for r in rows]), ""]
    if "relog" in out and "error" not in out["relog"]:
        saves = [t * 1e3 for t in out["relog"]["saves"]]
        adds = [t * 1e3 for t in out["relog"]["adds"]]
        lines.append(
            f"Re-logs: save #1 {saves[0]:.0f} ms, #{len(saves)} {saves[-1]:.0f} ms, max "
            f"{max(saves):.0f} ms; add_dir median {med(adds):.0f} ms; builder peak RSS "
            f"{out['relog']['rss_mib']:.0f} MiB; blobs/ {out['blob_bytes_many'] / 1e6:.1f} MB."
        )
    if "streams_build_seconds" in out:
        took = out["streams_build_seconds"]
        lines.append(
            f"Streams: {s.streams:,} saved in {took:.0f} s ({s.streams / took:,.0f}/s); "
            f"{s.runs:,} runs in {out['runs_build'].get('seconds', float('nan')):.0f} s."
        )
    lines.append(
        f"\nCommands' peak RSS includes the launcher's {out['launcher_floor_mib']:.0f} MiB "
        f"(the floor of that figure). {out['trials']} trial(s), {os.cpu_count()} CPUs, Python "
        f"{sys.version.split()[0]}, asyncart {asyncart.__version__}; whole run {elapsed:.0f} s; "
        f"load average {out['load'][0]:.1f} at the start, {out['load'][1]:.1f} at the end."
    )
    lines.append(f"Command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    lines.append(
        f"The benchmark data is in {root} ({du_mb(root):,.0f} MB). "
        f"Delete it when done: rm -rf {root}"
    )
    return "\n".join(lines)


def sizes_from(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else Sizes()
    given = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(Sizes)
        if getattr(args, field.name, None) is not None
    }
    return dataclasses.replace(sizes, **given)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", help="where to put the data (a new folder is made inside)")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 trial: a smoke test")
    parser.add_argument("--only", default="1,2,3,4,5", help="measurements to run, e.g. 1,5")
    parser.add_argument("--relogs", type=int, help="re-logs of measurement 1 (default 1,000)")
    parser.add_argument("--relog-files", type=int, help="files of the re-logged artifact")
    parser.add_argument("--million", type=int, help="files of measurement 2 (default 1,000,000)")
    parser.add_argument("--streams", type=int, help="artifacts of measurement 3 (default 100,000)")
    parser.add_argument("--runs", type=int, help="runs of measurement 3 (default 1,000)")
    parser.add_argument("--upserters", type=int, help="of measurement 5 (default 64)")
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(json.loads(args.worker))
        return
    sizes = sizes_from(args)
    trials = 1 if args.quick else args.trials
    only = set(args.only.replace(" ", "").split(","))
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="asyncart-scale-", dir=args.dir))
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    say(f"data in {root}; {trials} trial(s), measurements {sorted(only)}; {asdict(sizes)}")
    out: Results = {"trials": trials, "sizes": asdict(sizes)}
    out["launcher_floor_mib"] = measure(["true"])["rss_mib"]
    if only & {"1", "4"}:
        run_history(root, sizes, trials, out, opens="1" in only)
    if "4" in only and "error" not in out["relog"]:
        run_audit(root, trials, out)
    if "2" in only:
        run_million(root, sizes, trials, out)
    if "3" in only:
        run_streams(root, sizes, trials, out)
    if "5" in only:
        run_contention(root, sizes, trials, out)
    out["load"] = (load_before, os.getloadavg()[0])
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    print(report(out, sizes, only, root, time.perf_counter() - started))


if __name__ == "__main__":
    main()
