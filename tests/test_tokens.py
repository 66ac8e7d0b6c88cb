"""Listing and revoking tokens: the library calls, a real running server, and ``asyncart token``.

No mocks: tokens live in a real ``tokens.json``, the server is a real process (``_serving``), and
the CLI runs through its installed entry point in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import anyio
import pytest
from _serving import Server

from asyncart import InvalidInputError, NotFoundError
from asyncart._backends._wire import pack
from asyncart._server._tokens import (
    Grant,
    Grants,
    TokenFile,
    create_token,
    hash_token,
    list_tokens,
    revoke_token,
    tokens_path,
)

ASYNCART = shutil.which("asyncart", path=str(Path(sys.executable).parent))


def _snapshot(store: Path) -> tuple[bytes, int]:
    """The tokens file's bytes and inode: equal snapshots mean nothing was written."""
    path = tokens_path(store)
    return path.read_bytes(), path.stat().st_ino


# -- the library --------------------------------------------------------------------------


def test_list_shows_created_tokens_without_secrets(tmp_path: Path) -> None:
    before = time.time()
    reader = create_token(tmp_path, ["demo"], note="dashboard")
    writer = create_token(tmp_path, ["demo", "other"], write=True, note="ci")
    admin = create_token(tmp_path, admin=True)
    listed = list_tokens(tmp_path)
    assert [g.id for g in listed] == [hash_token(t)[:12] for t in (reader, writer, admin)]
    assert [(g.projects, g.write, g.admin, g.note) for g in listed] == [
        (("demo",), False, False, "dashboard"),
        (("demo", "other"), True, False, "ci"),
        ((), True, True, ""),
    ]
    assert [g.scope for g in listed] == ["read: demo", "write: demo, other", "admin"]
    assert all(g.created is not None and before <= g.created <= time.time() for g in listed)
    shown = repr(listed)
    assert not any(t in shown or hash_token(t) in shown for t in (reader, writer, admin))


def test_a_tokens_file_from_before_created_still_loads(tmp_path: Path) -> None:
    old = {"sha256": "ab" * 32, "id": "ab" * 6, "projects": ["demo"], "write": True}
    tokens_path(tmp_path).write_text(json.dumps({"tokens": [{**old, "admin": False}]}))
    (grant,) = list_tokens(tmp_path)
    assert (grant.id, grant.note, grant.created) == ("ab" * 6, "", None)
    (tmp_path / "served, no tokens yet").mkdir()
    assert list_tokens(tmp_path / "served, no tokens yet") == []
    with pytest.raises(NotFoundError, match="not a directory"):
        list_tokens(tmp_path / "nothing served here")


def test_revoke_removes_only_that_token_by_id_or_unique_prefix(tmp_path: Path) -> None:
    first = create_token(tmp_path, ["demo"], note="first")
    second = create_token(tmp_path, ["demo"], write=True, note="second")
    third = create_token(tmp_path, ["demo"], note="third")
    first_id, second_id = hash_token(first)[:12], hash_token(second)[:12]
    revoked = revoke_token(tmp_path, second_id)
    assert (revoked.id, revoked.note, revoked.write) == (second_id, "second", True)
    assert [g.note for g in list_tokens(tmp_path)] == ["first", "third"]
    prefix = next(
        first_id[:n]
        for n in range(4, 13)
        if not hash_token(third).startswith(first_id[:n])  # unique among the two left
    )
    assert revoke_token(tmp_path, prefix).note == "first"
    remaining = json.loads(tokens_path(tmp_path).read_text())["tokens"]
    assert [t["sha256"] for t in remaining] == [hash_token(third)]
    assert tokens_path(tmp_path).stat().st_mode & 0o777 == 0o600


def test_revoking_an_unknown_id_fails_clearly_and_changes_nothing(tmp_path: Path) -> None:
    create_token(tmp_path, ["demo"])
    before = _snapshot(tmp_path)
    with pytest.raises(NotFoundError, match=r"no token has id 'f00ba12'.*asyncart token list"):
        revoke_token(tmp_path, "f00ba12")
    with pytest.raises(InvalidInputError, match="give the id"):
        revoke_token(tmp_path, "")
    assert _snapshot(tmp_path) == before
    with pytest.raises(NotFoundError, match="is --store right"):
        revoke_token(tmp_path / "nothing served here", "f00ba12")
    assert not (tmp_path / "nothing served here").exists()


def test_an_ambiguous_prefix_revokes_nothing(tmp_path: Path) -> None:
    ids = [hash_token(create_token(tmp_path, ["demo"]))[:12] for _ in range(17)]
    shared = next(c for c in "0123456789abcdef" if sum(i.startswith(c) for i in ids) > 1)
    before = _snapshot(tmp_path)
    with pytest.raises(InvalidInputError, match=rf"tokens have ids starting '{shared}'"):
        revoke_token(tmp_path, shared)
    assert _snapshot(tmp_path) == before


@pytest.mark.allow_blocking
async def test_the_server_view_sees_a_revoke_within_the_same_mtime_tick(tmp_path: Path) -> None:
    token = create_token(tmp_path, ["demo"])
    path = tokens_path(tmp_path)
    grants = Grants(TokenFile(path))
    await grants.refresh()
    assert grants.lookup(token) is not None
    stat = path.stat()
    revoke_token(tmp_path, hash_token(token)[:12])
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as if written in the same tick
    await grants.refresh()
    assert grants.lookup(token) is None


# -- a running server ---------------------------------------------------------------------


async def _status(server: Server, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server.url}/v1/blobs/missing", data=pack([]), headers=headers) as r,
    ):
        return r.status


@pytest.fixture
def two_tokens(server: Server) -> tuple[str, str]:
    """Minted here, not in the async test: minting is blocking file I/O."""
    return server.token("demo"), server.token("demo", write=True)


async def test_a_revoked_token_is_refused_by_a_running_server_within_2s(
    server: Server, two_tokens: tuple[str, str]
) -> None:
    revoked, kept = two_tokens
    assert await _status(server, revoked) == 200 and await _status(server, kept) == 200
    await anyio.to_thread.run_sync(revoke_token, server.root, hash_token(revoked)[:12])
    start = time.monotonic()
    while await _status(server, revoked) != 401:
        assert time.monotonic() - start < 2.0, "the revoked token still works after 2 s"
        await anyio.sleep(0.05)
    assert await _status(server, kept) == 200


# -- the command line ---------------------------------------------------------------------


def _token(*args: str) -> subprocess.CompletedProcess[str]:
    assert ASYNCART, "the asyncart console script is not installed (pip install -e .)"
    return subprocess.run([ASYNCART, "token", *args], capture_output=True, text=True, timeout=60)


def test_cli_lists_and_revokes_tokens(tmp_path: Path) -> None:
    store = str(tmp_path / "served")
    minted = _token("create", "--store", store, "--project", "demo", "--write", "--note", "ci")
    assert minted.returncode == 0, minted.stderr
    secret = minted.stdout.strip()
    token_id = hash_token(secret)[:12]
    _token("create", "--store", store, "--admin")
    listed = _token("list", "--store", store)
    assert listed.returncode == 0 and listed.stderr == ""
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "SCOPE", "NOTE", "CREATED"]
    assert rows[0].split()[:4] == [token_id, "write:", "demo", "ci"]
    assert rows[0].split()[4].endswith("Z") and rows[1].split()[1:3] == ["admin", "-"]
    assert secret not in listed.stdout and hash_token(secret) not in listed.stdout
    jsonl = _token("list", "--store", store, "--json").stdout
    as_json = [json.loads(line) for line in jsonl.splitlines()]
    assert as_json[0]["id"] == token_id and as_json[0]["projects"] == ["demo"]
    assert as_json[0]["created"].endswith("Z") and "sha256" not in as_json[0]

    done = _token("revoke", "--store", store, token_id[:8])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"revoked {token_id} (ci), write: demo")
    assert token_id not in _token("list", "--store", store).stdout


def test_cli_revoke_of_an_unknown_id_exits_1_and_changes_nothing(tmp_path: Path) -> None:
    store = tmp_path / "served"
    create_token(store, ["demo"])
    before = _snapshot(store)
    done = _token("revoke", "--store", str(store), "f00ba12")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("asyncart token revoke: no token has id 'f00ba12'")
    assert "asyncart token list" in done.stderr and "Traceback" not in done.stderr
    assert _snapshot(store) == before


def test_the_tokens_file_is_renamed_into_place_durably(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each write of tokens.json (a create, a revoke) syncs the new file and then the
    directory that holds its name: without the second sync a power cut could bring a revoked
    token back."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # a spy: the real fsync runs, and what it synced is noted
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    create_token(tmp_path, ["demo"])
    assert synced[-1] == str(tmp_path), "the rename was not made durable in its directory"
    assert any(".tokens.json." in path for path in synced[:-1]), "the new file was not synced"


async def test_a_flood_of_unknown_tokens_reads_the_book_one_at_a_time() -> None:
    """Requests whose token is unknown share one reload that started after they asked: a
    flood of bad tokens costs the token book (a database table) one read at a time."""

    class Book:
        loads = in_flight = most = 0

        async def load(self) -> dict[str, Grant]:
            self.loads += 1
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            await anyio.sleep(0.05)
            self.in_flight -= 1
            return {}

    book = Book()
    grants = Grants(book)  # type: ignore[arg-type]
    asked = time.monotonic()
    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(grants.refresh, asked)
    assert (book.loads, book.most) == (1, 1)
    await grants.refresh(time.monotonic())  # asked after that reload started: a new one
    assert book.loads == 2
