"""The backend conformance suite against the HTTP store and a real server process, plus what
is special to HTTP: ranges, paging, resuming, limits."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from _serving import Server
from test_backends import BlobStoreContract, EventLogContract

from asyncart._backends.base import Store
from asyncart._backends.http import HttpStore


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    served = Server(tmp_path / "served").start()
    yield served
    served.stop()


@pytest.fixture
def token(server: Server) -> str:
    return server.token("*", write=True)


@pytest.fixture
async def http_store(server: Server, token: str) -> AsyncIterator[HttpStore]:
    store = HttpStore(server.url, token)
    yield store
    await store.aclose()


class TestHttpEventLog(EventLogContract):
    @pytest.fixture
    def store(self, http_store: HttpStore) -> Store:
        return http_store


class TestHttpBlobStore(BlobStoreContract):
    @pytest.fixture
    def store(self, http_store: HttpStore) -> Store:
        return http_store
