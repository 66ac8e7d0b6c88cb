"""``asyncart serve --tls-cert --tls-key``: the same store over https, with a test CA (trustme)
that the client trusts by ``HttpStore(ssl=...)`` or by ``SSL_CERT_FILE``."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import trustme
from _serving import Server

import asyncart


@pytest.fixture
def ca(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """The CA's certificate, and the ``serve`` options of a certificate it issued."""
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1")
    cert, key, ca_pem = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    authority.cert_pem.write_to_path(str(ca_pem))
    yield ca_pem, ["--tls-cert", str(cert), "--tls-key", str(key)]


@pytest.fixture
def server(tmp_path: Path, ca: tuple[Path, list[str]]) -> Iterator[Server]:
    served = Server(tmp_path / "served", *ca[1]).start()
    yield served
    served.stop()


@pytest.fixture
def token(server: Server) -> str:
    return server.token("demo", write=True)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("alpha")
    return tmp_path / "data"


async def test_a_version_round_trips_over_https(server, ca, token, data, tmp_path):
    assert server.url.startswith("https://")
    trusted = ssl.create_default_context(cafile=str(ca[0]))
    async with asyncart.HttpStore(server.url, token, ssl=trusted) as store:
        artifact = asyncart.Artifact("ds", "dataset")
        await artifact.add_dir(data)
        saved = await artifact.save(project="demo", store=store)
        root = await saved.download(tmp_path / "out")
        report = await asyncart.audit("demo", store=store, read_data=True)
    assert (root / "a.txt").read_text() == "alpha"
    assert report.ok


async def test_an_untrusted_certificate_fails_at_once_with_a_hint(server, token):
    store = asyncart.HttpStore(server.url, token)
    with anyio.fail_after(5):  # not retried: it would fail the same way
        with pytest.raises(asyncart.BackendUnavailableError, match="TLS .* SSL_CERT_FILE"):
            await store.log.streams()


def test_the_cli_trusts_the_ca_in_ssl_cert_file(server, ca, token):
    env = {**os.environ, "SSL_CERT_FILE": str(ca[0]), "ASYNCART_TOKEN": token}
    done = subprocess.run(
        [sys.executable, "-m", "asyncart", "--store", server.url, "ls", "demo"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, "no artifacts\n"), done.stderr


def test_a_certificate_without_its_key_is_refused_before_listening(tmp_path, ca):
    done = subprocess.run(
        [sys.executable, "-m", "asyncart", "serve", "--store", str(tmp_path), *ca[1][:2]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "--tls-cert and --tls-key go together" in done.stderr
