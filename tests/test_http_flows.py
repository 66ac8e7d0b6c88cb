"""Every seed flow of ``test_flows`` again, through a real server: the same tests, with the
``store`` fixture answering a URL instead of a directory (and the token in the environment)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import test_flows
from _serving import Server

from asyncart._backends._wire import TOKEN_ENV

LOCAL_ONLY = {  # about picking a directory, or looking into one with LocalStore
    "test_default_store_comes_from_the_environment",
    "test_file_changed_before_upload_commits_nothing",  # see test_http_faults
    "test_finishing_identical_content_closes_the_draft_without_a_version",
}

globals().update(
    {
        name: getattr(test_flows, name)
        for name in dir(test_flows)
        if name.startswith("test_") and name not in LOCAL_ONLY
    }
)


@pytest.fixture(autouse=True)
async def no_connection_left_open() -> AsyncIterator[None]:
    """Every flow passes its store as a URL: each call that opened a connection pool for it
    must have closed it (aiohttp reports a pool collected open to the loop's handler)."""
    loop = asyncio.get_running_loop()
    unclosed: list[str] = []

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        if "client_session" in context:
            unclosed.append(str(context["message"]))
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    yield
    gc.collect()
    loop.set_exception_handler(None)
    assert not unclosed


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = Server(tmp_path / "served").start()
    monkeypatch.setenv(TOKEN_ENV, server.token("*", write=True))
    yield server.url
    server.stop()
