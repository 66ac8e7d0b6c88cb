"""A token sees a blob only if a project it may read references it, or if it uploaded it.

Dedup across projects stays invisible: to any other token a stored blob is missing (probe and
read alike), its upload of the same bytes succeeds, and the store keeps the one copy it has.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import blake3
import pytest
from _records import chain, created
from _serving import Server, blob_count

import asyncart
from asyncart import InvalidInputError, NotFoundError
from asyncart._backends._wire import pack
from asyncart._backends.base import UploadItem
from asyncart._backends.http import HttpStore
from asyncart._domain.events import DraftOpened, Entry, FilesAdded

SECRET = b"project A's weights, which project B must not learn about\n"
D = blake3.blake3(SECRET).hexdigest()


@pytest.fixture
def tokens(server: Server) -> dict[str, str]:
    return {
        "a": server.token("a", write=True),
        "b": server.token("b", write=True),
        "b-read": server.token("b"),
        "c-read": server.token("c"),
        "all": server.token("*"),
        "admin": server.token(admin=True),
    }


async def _save(server: Server, token: str, project: str, path: Path) -> asyncart.Artifact:
    artifact = asyncart.Artifact("weights", "model")
    await artifact.add_file(path)
    return await artifact.save(project=project, store=server.url, token=token)


async def _sees(server: Server, token: str) -> tuple[bool, int, int]:
    """(does `missing` call it present, GET status, batch fetch status) of the blob D."""
    headers = {"Authorization": f"Bearer {token}"}
    async with HttpStore(server.url, token) as store:
        present = not await store.blobs.missing({D: len(SECRET)})
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(f"{server.url}/v1/blobs/{D}") as got:
            status = got.status
        async with session.post(f"{server.url}/v1/blobs/fetch", data=pack([D])) as fetched:
            batch = fetched.status
    return present, status, batch


@pytest.mark.allow_blocking  # reads the stored blob file to see it was not replaced
async def test_another_projects_blob_is_invisible_until_its_own_commit(
    server: Server, tokens: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "w.bin").write_bytes(SECRET)
    await _save(server, tokens["a"], "a", tmp_path / "w.bin")
    stored = server.root / "blobs" / D[:2] / D
    assert await _sees(server, tokens["a"]) == (True, 200, 200)
    for who in ("b", "b-read", "c-read"):  # as if the blob did not exist
        assert await _sees(server, tokens[who]) == (False, 404, 404), who
    async with HttpStore(server.url, tokens["b"]) as store:
        with pytest.raises(NotFoundError):
            await store.blobs.get_bytes(D)
    for who in ("all", "admin"):
        assert await _sees(server, tokens[who]) == (True, 200, 200), who

    # B commits the same bytes: it uploads them (it was told they are missing), the server
    # verifies them and keeps the copy it has; then B's tokens see the blob, C's still not
    (tmp_path / "copy.bin").write_bytes(SECRET)
    saved = await _save(server, tokens["b"], "b", tmp_path / "copy.bin")
    assert saved.manifest.entries["copy.bin"].digest == D
    for who in ("b", "b-read"):
        assert await _sees(server, tokens[who]) == (True, 200, 200), who
    assert await _sees(server, tokens["c-read"]) == (False, 404, 404)
    assert blob_count(server.root) == 1 and stored.read_bytes() == SECRET
    await saved.download(tmp_path / "out")
    assert (tmp_path / "out" / "copy.bin").read_bytes() == SECRET


async def test_an_upload_is_visible_to_its_token_before_any_commit(
    server: Server, tokens: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "w.bin").write_bytes(SECRET)
    await _save(server, tokens["a"], "a", tmp_path / "w.bin")
    async with HttpStore(server.url, tokens["b"]) as store:
        assert await store.blobs.missing({D: len(SECRET)}) == {D}
        assert await store.blobs.put_bytes(SECRET) == D  # missing -> upload -> (append)
        assert await store.blobs.missing({D: len(SECRET)}) == set()
        assert await store.blobs.get_bytes(D) == SECRET
    assert (await _sees(server, tokens["b-read"]))[0] is False  # only the uploading token


@pytest.mark.allow_blocking  # starts a second server process
async def test_a_commit_through_another_server_process_is_seen(
    server: Server, tokens: dict[str, str], tmp_path: Path
) -> None:
    assert await _sees(server, tokens["a"]) == (False, 404, 404)  # indexes project a (empty)
    other = Server(server.root).start()
    try:
        (tmp_path / "w.bin").write_bytes(SECRET)
        artifact = asyncart.Artifact("weights", "model")
        await artifact.add_file(tmp_path / "w.bin")
        await artifact.save(project="a", store=other.url, token=tokens["a"])
    finally:
        other.stop()
    assert await _sees(server, tokens["a"]) == (True, 200, 200)


@pytest.mark.parametrize("size", [100, 3 << 19, 3 << 20], ids=["batch", "put", "multipart"])
async def test_each_upload_route_shows_the_blob_to_its_token_only(
    server: Server, tokens: dict[str, str], tmp_path: Path, size: int
) -> None:
    data = bytes(range(256)) * (size // 256) + b"x"
    (tmp_path / "f").write_bytes(data)
    digest = blake3.blake3(data).hexdigest()
    item = UploadItem(str(tmp_path / "f"), digest, len(data))
    async with HttpStore(server.url, tokens["b"], part_size=1 << 20, part_threshold=2 << 20) as b:
        await b.blobs.put_files([item])
        assert await b.blobs.missing({digest: len(data)}) == set()
        assert await b.blobs.get_bytes(digest) == data
    async with HttpStore(server.url, tokens["b-read"]) as reader:
        assert await reader.blobs.missing({digest: len(data)}) == {digest}


async def test_recording_a_digest_does_not_make_its_blob_readable(
    server: Server, tokens: dict[str, str], tmp_path: Path
) -> None:
    """A writer of B who knows the digest of A's blob cannot get it by writing an entry that
    names it: the append is refused (upload the bytes first), and the blob stays invisible."""
    (tmp_path / "w.bin").write_bytes(SECRET)
    await _save(server, tokens["a"], "a", tmp_path / "w.bin")
    stream = "b/artifacts/stolen"
    bodies = [created(stream), DraftOpened("d"), FilesAdded("d", [Entry("w.bin", D, len(SECRET))])]
    async with HttpStore(server.url, tokens["b"]) as store:
        with pytest.raises(InvalidInputError, match="upload them first"):
            await store.log.append(stream, chain(stream, bodies), 0)
        assert await store.log.read(stream) == []
    assert await _sees(server, tokens["b"]) == (False, 404, 404)


@pytest.mark.allow_blocking  # damages and looks at the stored blob file
async def test_probing_an_invisible_blob_does_not_touch_it(
    server: Server, tokens: dict[str, str], tmp_path: Path
) -> None:
    """``missing`` answers for a blob the token cannot see without asking the store: a
    damaged blob of A stays where it is (for A's own client to repair), not moved or hashed."""
    (tmp_path / "w.bin").write_bytes(SECRET)
    await _save(server, tokens["a"], "a", tmp_path / "w.bin")
    stored = server.root / "blobs" / D[:2] / D
    stored.write_bytes(SECRET[:5])  # short, as a power cut can leave it
    async with HttpStore(server.url, tokens["b-read"]) as store:
        assert await store.blobs.missing({D: len(SECRET)}) == {D}
    assert stored.read_bytes() == SECRET[:5]
    assert not (server.root / "blobs" / "damaged").exists()
    async with HttpStore(server.url, tokens["a"]) as store:  # A's client finds it missing
        assert await store.blobs.missing({D: len(SECRET)}) == {D}
    assert (server.root / "blobs" / "damaged").exists()
