"""Every endpoint against every kind of token: none, unknown, read-only, another project's,
write, admin. A refused request changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import blake3
import pytest
from _records import append, created
from _serving import Server

import asyncart
from asyncart import AccessDeniedError
from asyncart._backends._wire import pack, unpack
from asyncart._backends.http import HttpStore
from asyncart._domain.events import CollectionCreated, DraftOpened, Entry, FilesAdded, decode

STREAM = "demo/artifacts/a"
PRESENT = b"a blob that is stored"
NEW = b"a blob that is not"
D, D_NEW = blake3.blake3(PRESENT).hexdigest(), blake3.blake3(NEW).hexdigest()

# (method, path, body, what it needs): "read" a project, "write" it, write "any"where, "admin";
# UPLOAD stands for the id of an upload the admin started (an upload's id is all it takes)
ENDPOINTS = [
    ("POST", "/v1/blobs/missing", pack([[D, len(PRESENT)], [D_NEW, len(NEW)]]), "token"),
    ("GET", f"/v1/blobs/{D}", None, "sees"),  # a project it may read refers to the blob
    ("PUT", f"/v1/blobs/{D_NEW}", NEW, "any"),
    ("POST", "/v1/blobs/flush", None, "any"),
    ("POST", f"/v1/uploads/{D_NEW}?size={len(NEW)}", None, "any"),
    ("GET", f"/v1/uploads/{D_NEW}/UPLOAD?size={len(NEW)}", None, "any"),
    ("PUT", f"/v1/uploads/{D_NEW}/UPLOAD/0?size={len(NEW)}&offset=0", NEW, "any"),
    ("POST", f"/v1/uploads/{D_NEW}/UPLOAD/complete?size={len(NEW)}", None, "any"),
    ("POST", f"/v1/log/{STREAM}?expected_seq=0", pack([b"second"]), "write"),  # 409 if allowed
    ("GET", f"/v1/log/{STREAM}", None, "read"),
    ("POST", "/v1/tokens", pack({"projects": ["demo"], "write": True}), "admin"),
]

# token kind -> what it may do (None: no token at all)
ALLOWED = {
    "none": set(),
    "unknown": set(),
    "read": {"token", "read", "sees"},
    "other": {"token", "any"},  # writes project "other": may upload blobs, not log or see demo's
    "write": {"token", "any", "read", "write", "sees"},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    served = Server(tmp_path_factory.mktemp("auth") / "served").start()
    yield served
    served.stop()


@pytest.fixture(scope="module")
def tokens(server: Server) -> dict[str, str | None]:
    return {
        "none": None,
        "unknown": "aat_" + "x" * 43,
        "read": server.token("demo"),
        "other": server.token("other", write=True),
        "write": server.token("demo", write=True),
        "admin": server.token(admin=True),
    }


async def _call(server: Server, token: str | None, method: str, path: str, body: bytes | None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, server.url + path, data=body, headers=headers) as response,
    ):
        return response.status, await response.read()


async def _state(server: Server, admin: str) -> tuple[list[bytes], list[str], int]:
    async with HttpStore(server.url, admin) as store:
        records = await store.log.read(STREAM)
        missing = sorted(await store.blobs.missing({D: len(PRESENT), D_NEW: len(NEW)}))
    return records, missing, len((server.root / "tokens.json").read_text())


@pytest.fixture(scope="module")
def seeded(server: Server, tokens: dict[str, str | None]) -> None:
    import asyncio

    async def seed() -> None:
        async with HttpStore(server.url, tokens["admin"]) as store:
            files = FilesAdded("d", [Entry("f", D, len(PRESENT))])
            await append(store.log, STREAM, [created(STREAM), DraftOpened("d"), files], 0)
            await store.blobs.put_bytes(PRESENT)

    asyncio.run(seed())


@pytest.mark.parametrize("kind", ["none", "unknown", "read", "other"])
@pytest.mark.allow_blocking  # reads tokens.json to see it did not change
async def test_refused_requests_change_nothing(
    server: Server, tokens: dict[str, str | None], seeded: None, kind: str
) -> None:
    before = await _state(server, tokens["admin"])  # type: ignore[arg-type]
    start = f"/v1/uploads/{D_NEW}?size={len(NEW)}"
    started = await _call(server, tokens["admin"], "POST", start, None)
    upload = unpack(started[1])["upload"]
    for method, template, body, needs in ENDPOINTS:
        path = template.replace("UPLOAD", upload)
        status, text = await _call(server, tokens[kind], method, path, body)
        if needs in ALLOWED[kind]:
            assert status < 400 or status == 409, (method, path, status, text)
            continue
        expected = 401 if kind in ("none", "unknown") else 404 if needs == "sees" else 403
        assert status == expected, (kind, method, path, status, text)
        assert b'"error"' in text
        if method != "GET" and needs != "token":  # a refused write: nothing changed
            after = await _state(server, tokens["admin"])  # type: ignore[arg-type]
            assert after[0] == before[0] and after[2] == before[2], (kind, method, path)


async def test_write_token_appends_and_uploads_admin_mints(
    server: Server, tokens: dict[str, str | None], seeded: None
) -> None:
    status, _ = await _call(server, tokens["write"], "PUT", f"/v1/blobs/{D_NEW}", NEW)
    assert status == 201
    status, body = await _call(server, tokens["admin"], *ENDPOINTS[-1][:3])
    assert status == 201
    minted = unpack(body)["token"]
    status, body = await _call(server, minted, "GET", f"/v1/log/{STREAM}", None)
    assert status == 200
    assert decode(unpack(body)["records"][0], STREAM, 0).body == CollectionCreated("a", "dataset")


async def test_listing_shows_only_readable_projects(
    server: Server, tokens: dict[str, str | None], seeded: None
) -> None:
    async with HttpStore(server.url, tokens["other"]) as store:
        await append(store.log, "other/artifacts/b", [created("other/artifacts/b")], 0)
        assert await store.log.streams() == ["other/artifacts/b"]
    async with HttpStore(server.url, tokens["read"]) as store:
        assert await store.log.streams() == [STREAM]


async def test_library_errors_name_the_token(
    server: Server, tokens: dict[str, str | None], seeded: None, tmp_path: Path
) -> None:
    async with HttpStore(server.url, tokens["read"]) as store:
        with pytest.raises(AccessDeniedError, match="may not write to 'demo/artifacts/a'"):
            await store.log.append(STREAM, [b"nope"], 1)
    artifact = asyncart.Artifact("model", "model")
    (tmp_path / "w.bin").write_bytes(b"weights")
    await artifact.add_file(tmp_path / "w.bin")
    with pytest.raises(AccessDeniedError, match="check the token"):
        async with asyncart.init(project="demo", store=server.url, token=tokens["read"]) as run:
            await run.log_artifact(artifact)
    with pytest.raises(AccessDeniedError, match="unknown token"):
        await asyncart.Api("demo", store=server.url, token="aat_nope").artifact("model")
