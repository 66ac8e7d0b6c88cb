"""Where a test runs: a fresh local store, PostgreSQL + S3, or either through a real server.

A test module makes its own ``where`` fixture over the kinds it needs::

    @pytest.fixture(params=EVERY)
    def where(request, tmp_path):
        yield from stores(request, tmp_path)

``EVERY`` is the four a garbage collection runs on; ``THREE`` leaves out the server over
PostgreSQL + S3, for behaviour the server adds nothing to there.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _serving import Server

from asyncart._backends.base import Collectable
from asyncart._backends.s3_blobs import S3BlobStore
from asyncart._gc import SHARDS
from asyncart._store import load_backend, open_store, prepare_store

EVERY = ["local", "http", "pg", "http-pg"]
THREE = ["local", "http", "pg"]


@dataclass
class Where:
    store: str
    token: str | None = None  # a write token of project demo (through a server)
    admin: str | None = None  # an admin token (through a server): gc, audit of every project
    direct: str | None = None  # the store itself, when ``store`` is its server's URL

    def opened(self) -> Collectable:
        """The store itself (not its server), opened in this process."""
        store = open_store(self.direct or self.store)
        assert isinstance(store, Collectable)
        return store


def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Where]:
    """The store ``request.param`` names (one of ``EVERY``), fresh, for one test."""
    kind, _, under = request.param.rpartition("-")
    direct = request.getfixturevalue("pg_s3_store") if "pg" in (kind, under) else None
    if request.param.startswith("http"):
        root = tmp_path / "served"
        server = Server(root, store=direct).start()
        try:
            token = server.token("demo", write=True)
            yield Where(server.url, token, server.token(admin=True), direct or str(root))
        finally:
            server.stop()
    else:
        yield Where(direct or str(tmp_path / "store"))


async def blobs(where: Where) -> set[str]:
    """The digests of every blob stored: as S3 lists the store's ``blobs/`` (one listing, not
    one a shard as the collector makes), or as the local store lists its shards."""
    store = where.opened()
    await load_backend(where.direct or where.store)
    await prepare_store(store, create=False)
    async with store.held():
        if isinstance(store.blobs, S3BlobStore):
            return await _s3_blobs(store.blobs)
        return {blob.digest for shard in SHARDS for blob in await store.listed(shard)}


async def _s3_blobs(s3: S3BlobStore) -> set[str]:
    head = s3.key("0" * 64).rsplit("/", 2)[0] + "/"
    found = set()
    async with s3._use() as client:
        async for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=s3.bucket, Prefix=head
        ):
            found.update(obj["Key"].rsplit("/", 1)[1] for obj in page.get("Contents", []))
    return {digest for digest in found if len(digest) == 64}
