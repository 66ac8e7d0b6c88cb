"""The memory the server's validation of one large append holds, in this process.

    python bench/bench_server_append.py [--files N] [--dir DIR] [--trace]
    python bench/bench_server_append.py --digests N

Builds the records of a root commit of ``N`` files (a collection, a draft, files.added
records of 10,000 entries, the commit), notes their digests as the token's uploads (as the
blob routes do), then publishes them as ``POST /v1/log/{stream}`` does with a posted body:
validation, blob-scope check, fold, one log append on a fresh local store under ``DIR``,
and the scope index's update. (Over HTTP a large append comes in parts, fetched a part
ahead of the validation: ``bench_serve_rss.py`` measures that whole path.)

Prints the server-side RSS before, and the peak RSS (VmHWM, reset just before) the publish
reached; with ``--trace``, tracemalloc's peak and what stays held (slower), in bytes per file.

``--digests N`` instead compares the blob-scope set (``_digests.DigestSet``) with a dict of
``bytes``: bytes per digest (tracemalloc) and CPU seconds to add ``N`` digests and to look up
``N`` more (half of them held).
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import anyio
import blake3

from asyncart._backends.local import LocalStore
from asyncart._domain.events import (
    CollectionCreated,
    DraftOpened,
    Entry,
    FilesAdded,
    Record,
    VersionCommitted,
    encode,
    record_hash,
)
from asyncart._domain.manifest import Manifest
from asyncart._server._digests import DigestSet
from asyncart._server._scope import Referenced, Scope
from asyncart._server._seen import MemorySeen
from asyncart._server._tokens import Grant
from asyncart._server._validate import Streams

PER_RECORD = 10_000
STREAM = "scale/artifacts/big"


def status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Start VmHWM again from the current RSS (Linux 4.0+), so it shows this publish only."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def records(files: int) -> tuple[list[bytes], list[bytes]]:
    """The encoded records of a root commit of ``files`` files, and their raw digests."""
    entries = [
        Entry(f"d{i // 1000:04d}/f{i:07d}.bin", blake3.blake3(b"%d" % i).hexdigest(), 16)
        for i in range(files)
    ]
    digest = Manifest({e.path: e for e in entries}).digest
    bodies: list[Any] = [CollectionCreated("big", "dataset"), DraftOpened("d")]
    bodies += [FilesAdded("d", entries[i : i + PER_RECORD]) for i in range(0, files, PER_RECORD)]
    bodies.append(VersionCommitted("d", 0, digest, files, 16 * files))
    out, prev = [], ""
    for seq, body in enumerate(bodies):
        out.append(encode(Record(STREAM, seq, 0.0, "user:bench", prev, body)))
        prev = record_hash(out[-1])
    return out, [bytes.fromhex(e.digest) for e in entries]


async def compare_sets(n: int) -> dict[str, Any]:
    """DigestSet against a dict of bytes (see the module docstring): timed untraced, then
    added again under tracemalloc for the bytes held."""
    held = [blake3.blake3(b"%d" % i).digest() for i in range(n)]
    wanted = list({*held[: n // 2], *(blake3.blake3(b"x%d" % i).digest() for i in range(n // 2))})
    out: dict[str, Any] = {"digests": n}
    for name in ("DigestSet", "dict"):
        row: dict[str, float] = {}
        for traced in (False, True):
            gc.collect()
            if traced:  # from before the digests are made: a dict keeps their objects
                tracemalloc.start()
            copies = [bytes.fromhex(d.hex()) for d in held]  # objects of their own, as decoded
            start = time.process_time()
            digests, plain = DigestSet(), dict[bytes, None]()
            if name == "DigestSet":
                await digests.add(copies)
            else:
                plain.update(dict.fromkeys(copies))
            added = time.process_time()
            del copies
            if traced:
                row["bytes_per_digest"] = round(tracemalloc.get_traced_memory()[0] / n, 1)
                tracemalloc.stop()
                continue
            if name == "DigestSet":
                absent = await digests.missing(wanted)
            else:
                absent = set(wanted) - plain.keys()
            row["add_s"], row["lookup_s"] = added - start, time.process_time() - added
            assert len(absent) == len(wanted) - n // 2
        out[name] = {k: round(v, 2) for k, v in row.items()}
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digests", type=int)
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--dir", type=Path, default=Path("/work/data/srvrss/append"))
    parser.add_argument("--trace", action="store_true")
    args = parser.parse_args()
    if args.digests:
        print(json.dumps(await compare_sets(args.digests)))
        return
    payloads, digests = records(args.files)
    size = sum(map(len, payloads))
    store = LocalStore(args.dir / uuid.uuid4().hex[:8])
    grant = Grant("tok", ("scale",), write=True)
    seen = MemorySeen()
    await seen.add(grant.id, digests)
    scope, streams = Scope(store, seen), Streams(store)
    await scope.unseen(grant, {digests[0]})  # the project indexed, as a first `missing` does
    del digests
    gc.collect()
    reset_peak()
    if args.trace:
        tracemalloc.start()
    before_rss, before_traced = status_mib("VmRSS"), tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()

    referenced = Referenced()

    async def check(decoded: list[Record]) -> None:
        await scope.refuse_unseen(grant, decoded, into=referenced)

    done = await streams.append(STREAM, payloads, 0, grant.id, check)
    await scope.appended(STREAM, 0, done.count, referenced, done.last_hash)
    seconds = time.perf_counter() - start
    traced = tracemalloc.get_traced_memory()
    del done
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    out = {
        "files": args.files,
        "records_bytes": size,
        "seconds": round(seconds, 2),
        "rss_before_mib": round(before_rss, 1),
        "vmhwm_mib": round(status_mib("VmHWM"), 1),
        "vmhwm_growth_mib": round(status_mib("VmHWM") - before_rss, 1),
    }
    if args.trace:
        out["traced_peak_per_file"] = round((traced[1] - before_traced) / args.files, 1)
        out["traced_held_after_per_file"] = round((after - before_traced) / args.files, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    anyio.run(main)
