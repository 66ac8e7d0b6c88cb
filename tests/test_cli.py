"""The ``asyncart`` command through its installed entry point, and the library calls it uses.

Most tests start the real console script in a subprocess, with stdout and stderr piped (not a
terminal), exactly as a script or CI job would.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

import asyncart
from asyncart._cli import COMMANDS, main
from asyncart._cli._browse import _times
from asyncart._cli._console import format_time

ASYNCART = shutil.which("asyncart", path=str(Path(sys.executable).parent))


def run(
    store: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``asyncart`` with ``$ASYNCART_STORE`` set to ``store``."""
    assert ASYNCART, "the asyncart console script is not installed (pip install -e .)"
    full_env = {**os.environ, asyncart.STORE_ENV: store, **(env or {})}
    return subprocess.run(
        [ASYNCART, *args], capture_output=True, text=True, env=full_env, timeout=60
    )


def ok(store: str, *args: str) -> str:
    """Run ``asyncart``, expect success and no stderr output; return stdout."""
    done = run(store, *args)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def lines(text: str) -> list[str]:
    return text.strip().splitlines()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """a.txt (6 B), b.txt (5 B), img/1.png (1000 B)."""
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "b.txt").write_text("beta\n")
    (root / "img" / "1.png").write_bytes(b"\x89" * 1000)
    return root


@pytest.fixture
def two_versions(store: str, data: Path, tmp_path: Path) -> Path:
    """ds:v0 = data (alias best); ds:v1 = data with b.txt removed and c.txt added."""
    ok(store, "put", str(data), "ds", "--type", "dataset", "--alias", "best", "-q")
    second = tmp_path / "second"
    shutil.copytree(data, second)
    (second / "b.txt").unlink()
    (second / "c.txt").write_text("gamma\n")
    ok(store, "put", str(second), "ds", "--type", "dataset", "-q")
    return second


# -- put and get ----------------------------------------------------------------------------


def test_put_reports_version_digest_files_bytes_and_what_was_stored(store, data, tmp_path):
    out = ok(store, "put", str(data), "ds", "--type", "dataset", "-a", "best", "-m", "first")
    saved = asyncart.Api(store=store)
    first = lines(out)
    assert first[0] == "logged uncategorized/ds:v0 (aliases: best, latest)"
    assert first[2] == "files:  3 (1011 B)"
    assert first[3].startswith("stored: 1011 B new")
    assert first[4].startswith("time:   ")

    (data / "new.txt").write_text("0123456789")  # one new file of 10 bytes; the rest deduplicate
    again = json.loads(ok(store, "put", str(data), "demo/ds", "--type", "dataset", "--json"))
    assert again["artifact"] == "demo/ds:v0"
    assert (again["files"], again["bytes"], again["stored_bytes"]) == (4, 1021, 10)
    assert again["seconds"] >= 0

    import asyncio

    v0 = asyncio.run(saved.artifact("ds:v0"))
    assert first[1] == f"digest: {v0.digest}"
    assert v0.description == "first"


def test_put_a_single_file_and_quiet_prints_only_the_name(store, data):
    assert ok(store, "put", str(data / "a.txt"), "notes", "-t", "text", "-q") == (
        "uncategorized/notes:v0\n"
    )
    shown = json.loads(ok(store, "show", "notes", "--json"))
    assert [e["path"] for e in shown["entries"]] == ["a.txt"]


def test_get_downloads_and_verifies(store, data, tmp_path):
    ok(store, "put", str(data), "ds", "-t", "dataset", "-a", "best")
    dest = tmp_path / "out"
    out = ok(store, "get", "ds:best", str(dest), "--verify")
    assert out.startswith(f"downloaded uncategorized/ds:v0 to {dest}: 3 files, 1011 B")
    assert out.rstrip().endswith("; verified")
    assert (dest / "img" / "1.png").read_bytes() == b"\x89" * 1000
    assert ok(store, "get", "ds:v0", str(tmp_path / "again"), "-q").strip() == str(
        tmp_path / "again"
    )


def test_get_refuses_to_replace_a_directory_with_one_clear_line(store, data, tmp_path):
    ok(store, "put", str(data), "ds", "-t", "dataset")
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "a.txt").mkdir()  # a directory where a file must go
    done = run(store, "get", "ds", str(dest))
    assert done.returncode == 1
    assert lines(done.stderr) == [
        f"asyncart: error: refusing to overwrite {dest / 'a.txt'}: not a regular file"
    ]


# -- browsing -------------------------------------------------------------------------------


def test_ls_versions_and_show(store, two_versions):
    listing = lines(ok(store, "ls"))
    assert listing[0].split() == ["ARTIFACT", "TYPE", "VERSIONS", "LATEST", "ALIASES", "UPDATED"]
    assert listing[1].split()[:6] == ["uncategorized/ds", "dataset", "2", "v1", "best:", "v0"]
    assert ok(store, "ls", "other") == "no artifacts\n"
    assert ok(store, "ls", "-q") == "uncategorized/ds\n"

    table = lines(ok(store, "versions", "ds"))
    assert [row.split()[0] for row in table] == ["VERSION", "v0", "v1"]
    assert "best" in table[1] and "latest" in table[2]
    as_json = [json.loads(line) for line in lines(ok(store, "versions", "ds", "--json"))]
    assert [(v["version"], v["files"], v["aliases"]) for v in as_json] == [
        ("v0", 3, ["best"]),
        ("v1", 3, ["latest"]),
    ]

    shown = ok(store, "show", "ds:v1")
    assert "aliases:     latest" in shown
    assert "logged by:   no run (saved outside a run)" in shown
    assert shown.rstrip().endswith("img/1.png")
    assert "c.txt" in shown and "b.txt" not in shown


async def test_show_names_the_runs_behind_a_version(store, data):
    async with asyncart.init(project="demo", job_type="train", id="trainer1", store=store) as run:
        artifact = asyncart.Artifact("model", "model", metadata={"lr": 0.1})
        await artifact.add_dir(data)
        await run.log_artifact(artifact)
    async with asyncart.init(project="demo", job_type="eval", id="eval1", store=store) as run:
        await run.use_artifact("model:v0")
    shown = json.loads(await _cli("show", "demo/model:v0", "--json", "--store", store))
    assert shown["logged_by"]["id"] == "trainer1"
    assert [r["id"] for r in shown["used_by"]] == ["eval1"]
    assert shown["metadata"] == {"lr": 0.1}


async def _cli(*args: str) -> str:
    """Run the CLI in a subprocess from an async test (the loop must not block on it)."""
    import anyio

    done = await anyio.run_process([ASYNCART or "asyncart", *args], check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def test_diff_of_an_incremental_version(store, data, tmp_path):
    ok(store, "put", str(data), "ds", "-t", "dataset")
    (tmp_path / "a2.txt").write_text("ALPHA\n")
    (tmp_path / "c.txt").write_text("gamma\n")

    async def edit() -> None:
        base = await asyncart.Api(store=store).artifact("ds")
        draft = base.new_draft()  # incremental: only the changes are logged
        draft.remove("b.txt")
        await draft.add_file(tmp_path / "a2.txt", name="a.txt", overwrite=True)
        await draft.add_file(tmp_path / "c.txt")
        await draft.save()

    import asyncio

    asyncio.run(edit())
    assert lines(ok(store, "diff", "ds:v0", "ds:v1")) == [
        "M  a.txt",
        "D  b.txt",
        "A  c.txt",
        "uncategorized/ds:v0 -> uncategorized/ds:v1: 1 added, 1 removed, 1 changed",
    ]
    as_json = json.loads(ok(store, "diff", "ds:v1", "ds:v0", "--json"))
    assert (as_json["added"], as_json["removed"], as_json["changed"]) == (
        ["b.txt"],
        ["c.txt"],
        ["a.txt"],
    )
    assert ok(store, "diff", "ds:v0", "ds:v0", "-q") == ""


def test_alias_moves_and_is_removed(store, two_versions):
    assert ok(store, "alias", "ds:v1", "best").startswith("best now points at uncategorized/ds:v1")
    assert json.loads(ok(store, "show", "ds:v0", "--json"))["aliases"] == []
    assert ok(store, "alias", "ds:v1", "best", "--remove").startswith("best removed from")
    done = run(store, "alias", "ds:v1", "best", "--remove")
    assert done.returncode == 1
    assert lines(done.stderr) == [
        "asyncart: error: alias 'best' is not on uncategorized/ds:v1 (it is not set)"
    ]
    latest = run(store, "alias", "ds:v0", "latest")
    assert latest.returncode == 1 and "'latest' always points at the newest" in latest.stderr


def test_log_shows_each_event_oldest_first(store, two_versions):
    ok(store, "alias", "ds:v1", "best")
    shown = lines(ok(store, "log", "ds"))
    assert [int(line.split()[0]) for line in shown] == list(range(len(shown)))
    assert "created artifact ds of type dataset" in shown[0]
    assert shown[-1].endswith("moved aliases on v1: +best")
    assert all(line.split()[2].startswith("user:") for line in shown)

    events = [json.loads(line) for line in lines(ok(store, "log", "ds", "--json"))]
    assert [e["kind"] for e in events].count("version.committed") == 2
    assert events[-1]["data"] == {"version": 1, "add": ["best"], "remove": []}
    assert ok(store, "log", "ds", "--since", "@" + str(time.time() + 60)) == ""
    whole_project = ok(store, "log")
    assert "artifacts/ds" in whole_project


# -- audit ----------------------------------------------------------------------------------


def _log_file(store: str) -> Path:
    return Path(store) / "log" / "uncategorized" / "artifacts" / "ds.log"


def _blob(store: str, ref: str, path: str) -> tuple[str, Path]:
    """The digest of ``path`` in version ``ref``, and where its blob lives."""
    entries = json.loads(ok(store, "show", ref, "--json"))["entries"]
    [digest] = [e["digest"] for e in entries if e["path"] == path]
    return digest, Path(store) / "blobs" / digest[:2] / digest


def test_audit_passes_on_a_healthy_store(store, two_versions):
    out = ok(store, "audit", "--read-data")
    assert lines(out) == ["audited 1 streams, 10 records, 2 versions, 4 blobs (4 read): OK"]
    report = json.loads(ok(store, "audit", "uncategorized", "--json"))
    assert report["ok"] and report["problems"] == []
    half = ok(store, "audit", "--read-data-subset", "50%")
    assert "(2 read): OK" in half


def test_audit_names_the_record_after_one_byte_of_the_log_changes(store, two_versions):
    path = _log_file(store)
    data = bytearray(path.read_bytes())
    data[data.index(b"b.txt")] = ord("B")  # inside v0's files.added record (seq 2)
    path.write_bytes(bytes(data))
    done = run(store, "audit")
    assert done.returncode == 1
    [problem] = lines(done.stdout)[1:]
    assert problem.startswith("  uncategorized/artifacts/ds: ")
    assert "seq 2 (byte 380): record checksum mismatch" in problem
    broken = run(store, "get", "ds:v0", "somewhere")
    assert broken.returncode == 1 and len(lines(broken.stderr)) == 1
    assert "Traceback" not in broken.stderr


def test_audit_names_a_corrupted_blob_only_when_reading_data(store, two_versions):
    _, blob = _blob(store, "ds:v0", "b.txt")
    blob.chmod(0o644)
    blob.write_bytes(b"BETA\n")  # same size, other bytes
    assert run(store, "audit").returncode == 0  # existence alone cannot tell
    done = run(store, "audit", "--read-data")
    assert done.returncode == 1
    [problem] = lines(done.stdout)[1:]
    assert problem.startswith("  uncategorized/artifacts/ds seq 4: ds:v0/b.txt: blob ")
    assert "is corrupt" in problem


def test_audit_names_a_deleted_blob(store, two_versions):
    digest, blob = _blob(store, "ds:v1", "c.txt")
    blob.unlink()
    done = run(store, "audit", "--json")
    assert done.returncode == 1
    [problem] = json.loads(done.stdout)["problems"]
    assert problem == {
        "stream": "uncategorized/artifacts/ds",
        "seq": 9,
        "message": f"blob {digest} of ds:v1/c.txt is missing or damaged (not 6 bytes); "
        "a damaged copy is kept aside, and logging the file again repairs it",
    }


def test_audit_as_of_before_and_after_an_alias_move(store, two_versions):
    before = datetime.now(UTC).isoformat()
    time.sleep(0.01)
    ok(store, "alias", "ds:v1", "best")
    then = ok(store, "audit", "--as-of", before)
    assert lines(then)[-1] == "  uncategorized/ds (dataset): 2 versions; best: v0, latest: v1"
    now = ok(store, "audit", "--as-of", "@" + str(time.time() + 1))
    assert lines(now)[-1] == "  uncategorized/ds (dataset): 2 versions; best: v1, latest: v1"
    first = ok(store, "audit", "--as-of", "4")  # seq 4 commits v0
    assert lines(first)[-1] == "  uncategorized/ds (dataset): 1 version; best: v0, latest: v0"
    early = ok(store, "audit", "--as-of", "2020-01-01")
    assert lines(early)[-1] == "  no artifacts"


# -- behaviour of the command itself --------------------------------------------------------


def test_a_non_terminal_run_prints_no_progress_bar(store, data, tmp_path):
    done = run(store, "put", str(data), "ds", "-t", "dataset")
    assert done.returncode == 0 and done.stderr == ""
    forced = run(store, "put", str(data), "ds2", "-t", "dataset", "--progress")
    assert "hashing: 3/3 files, 1011 B/1011 B (100%)" in forced.stderr
    forced = run(store, "get", "ds", str(tmp_path / "out"), "--progress")
    assert forced.returncode == 0
    assert "downloading: 3/3 files, 1011 B/1011 B (100%)" in forced.stderr


def test_errors_are_one_line_with_a_hint_and_a_traceback_only_with_debug(store, data):
    ok(store, "put", str(data), "ds", "-t", "dataset", "-q")
    done = run(store, "get", "nope")
    assert done.returncode == 1
    assert lines(done.stderr) == [
        "asyncart: error: artifact uncategorized/nope:latest not found (versions: 0; aliases: "
        "none) (`asyncart ls` lists artifacts, `asyncart versions NAME` their versions)"
    ]
    assert done.stdout == ""
    debug = run(store, "get", "nope", "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    bad = run(store, "put", "x", "bad name", "-t", "dataset")
    assert bad.returncode == 1 and lines(bad.stderr)[0].startswith(
        "asyncart: error: invalid artifact name 'bad name'"
    )
    usage = run(store, "put", "x")
    assert usage.returncode == 2 and "required" in usage.stderr


def test_store_option_wins_over_the_environment(store, data, tmp_path):
    other = str(tmp_path / "other")
    ok(store, "put", str(data), "ds", "-t", "dataset", "--store", other)
    assert run(store, "ls").returncode == 1 and not Path(store).exists()  # nothing went there
    assert ok(store, "--store", other, "ls", "-q") == "uncategorized/ds\n"


def test_python_dash_m_runs_the_same_command(store, data):
    done = subprocess.run(
        [sys.executable, "-m", "asyncart", "--version"], capture_output=True, text=True
    )
    assert done.stdout == f"asyncart {asyncart.__version__}\n"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help_with_an_example(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    assert f"usage: asyncart {name}" in shown
    assert f"example:\n  asyncart {name} " in shown
    assert "--store" in shown
    # the default store, each step of it (argparse wraps the help: compare without breaks)
    words = " ".join(shown.split())
    assert "$ASYNCART_STORE, else $XDG_DATA_HOME/asyncart, else ~/.local/share/asyncart" in words


def test_ctrl_c_during_put_commits_nothing_and_says_so(store, data, monkeypatch, capsys):
    import asyncart._repository

    async def interrupted(*args: object, **kwargs: object) -> int:
        # Ctrl-C lands on the main thread, where the loop runs (not in a worker thread: an
        # exception there would strand AnyIO's non-daemon workers and hang interpreter exit)
        raise KeyboardInterrupt

    monkeypatch.setattr(asyncart._repository, "upload", interrupted)
    assert main(["put", str(data), "ds", "-t", "dataset", "--store", store]) == 130
    err = capsys.readouterr().err
    assert lines(err) == [
        "asyncart: error: interrupted: nothing was half-committed: a version is logged "
        "entirely or not at all (`asyncart versions NAME` shows which)"
    ]
    monkeypatch.undo()
    assert run(store, "ls").stdout == "no artifacts\n"


# -- the library calls behind the commands ---------------------------------------------------


async def test_api_lists_projects_collections_and_history(store, data):
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_dir(data)
    v0 = await artifact.save(project="demo", store=store, aliases=["best"])
    async with asyncart.Api("demo", store=store) as api:
        assert await api.projects() == ["demo"]
        [collection] = await api.artifact_collections()
        assert (collection.name, collection.type, collection.versions) == ("ds", "dataset", 1)
        assert dict(collection.aliases) == {"best": 0, "latest": 0}
        assert collection.updated == v0.created_at
        history = await api.history("ds")
        assert [e.kind for e in history][-1] == "version.committed"
        assert history[-1].summary.startswith("committed v0: 3 files, 1,011 bytes")
        assert await api.history("ds", since=datetime.now(UTC)) == []
        with pytest.raises(asyncart.NotFoundError, match="demo/nope not found"):
            await api.history("nope")


async def test_set_aliases_validates_before_writing(store, data):
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_dir(data)
    v0 = await artifact.save(store=store)
    with pytest.raises(asyncart.InvalidInputError, match="both add and remove"):
        await v0.set_aliases(add=["x"], remove=["x"])
    with pytest.raises(asyncart.InvalidInputError, match="reserved"):
        await v0.set_aliases(add=["v3"])
    moved = await v0.set_aliases(add=["prod", "prod"])
    assert moved.aliases == ["latest", "prod"]
    assert await v0.diff(moved) == asyncart.ManifestDiff((), (), ())
    assert not await v0.diff(moved)


async def test_audit_rejects_bad_options(store):
    with pytest.raises(asyncart.InvalidInputError, match="fraction"):
        await asyncart.audit(store=store, read_data=1.5)
    with pytest.raises(asyncart.InvalidInputError, match="as_of"):
        await asyncart.audit(store=store, as_of=-1)


_SLOW_UPLOAD = """
import sys, time
from asyncart._backends.local_blobs import LocalBlobStore
from asyncart._cli import main

original = LocalBlobStore._put_files

def slow(self, items):
    time.sleep(1)  # long enough for the test to press Ctrl-C while the upload runs
    return original(self, items)

LocalBlobStore._put_files = slow
sys.exit(main(sys.argv[1:]))
"""


def test_a_real_ctrl_c_during_an_upload_stops_cleanly(store, data):
    argv = ["put", str(data), "ds", "-t", "dataset", "--store", store, "--progress"]
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_UPLOAD, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    seen, deadline = b"", time.monotonic() + 20
    while b"uploading: 0/3 files" not in seen and time.monotonic() < deadline:
        seen += os.read(proc.stderr.fileno(), 4096)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, (seen + err).decode()
    assert out == b""
    assert (
        (seen + err)
        .decode()
        .splitlines()[-1]
        .startswith("asyncart: error: interrupted: nothing was half-committed")
    )
    assert "Traceback" not in err.decode()
    assert ok(store, "ls") == "no artifacts\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["log", "--since", "yesterday-ish"],
        ["audit", "--as-of", "not a time"],
        ["audit", "--read-data-subset", "150%"],
        ["audit", "--read-data", "--read-data-subset", "10%"],
    ],
)
def test_bad_values_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(f"asyncart {argv[0]}: error: argument ")


def test_times_can_be_relative_unix_or_iso():
    from asyncart._cli._values import parse_as_of, parse_time

    assert abs(parse_time("2h").timestamp() - (time.time() - 7200)) < 5
    assert parse_time("@0") == datetime(1970, 1, 1, tzinfo=UTC)
    assert parse_time("2026-11-27T12:00:00") == datetime(2026, 11, 27, 12, tzinfo=UTC)
    assert parse_as_of("12") == 12


def test_serve_and_token_are_subcommands(store):
    minted = subprocess.run(
        [
            sys.executable,
            "-m",
            "asyncart",
            "token",
            "create",
            "--store",
            store,
            "--project",
            "demo",
            "--write",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert len(minted.stdout.strip()) >= 32
    shown = subprocess.run(
        [sys.executable, "-m", "asyncart", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "--store" in shown.stdout and "--port" in shown.stdout
    assert (
        "asyncart serve"
        in subprocess.run(
            [sys.executable, "-m", "asyncart", "--help"], capture_output=True, text=True, timeout=60
        ).stdout
    )


def test_ls_times_are_format_times_of_their_datetimes():
    """``ls`` writes its UPDATED column from POSIX times by arithmetic: the same text as
    ``format_time`` of each time's ``datetime`` (rounded to the microsecond, half to even,
    then cut at the second), near a second's, a day's or a leap day's end too."""
    rng = random.Random(9)
    ends = [59.9999995, 86399.9999995, 86399.9999996, 951868799.9999995, 1796302128.9999994]
    times: list[float | None] = [0.0, None, -1.5, 4102444800.5, 1e10]
    times += [math.nextafter(t, d) for t in ends for d in (0.0, math.inf)] + ends
    times += [rng.uniform(0, 4e9) for _ in range(20_000)]
    times += [math.floor(rng.uniform(0, 4e9)) + 1 - rng.uniform(0, 2e-6) for _ in range(20_000)]
    expected = [format_time(None if t is None else datetime.fromtimestamp(t, UTC)) for t in times]
    assert _times(times) == expected
