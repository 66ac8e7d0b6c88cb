"""The multi-process scenarios of ``test_multiprocess`` through one server: 8 worker processes
upsert parts of one version and a ninth finishes it; 6 processes race ``log_artifact``.

The same tests, with ``store`` a URL and the token in the environment the workers inherit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import test_multiprocess
from _serving import Server

from asyncart._backends._wire import TOKEN_ENV

test_upserts_from_8_processes_commit_one_version_with_the_union = (
    test_multiprocess.test_upserts_from_8_processes_commit_one_version_with_the_union
)
test_concurrent_log_artifact_from_6_processes_gives_v0_to_v5 = (
    test_multiprocess.test_concurrent_log_artifact_from_6_processes_gives_v0_to_v5
)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = Server(tmp_path / "served").start()
    monkeypatch.setenv(TOKEN_ENV, server.token("demo", write=True))
    yield server.url
    server.stop()
