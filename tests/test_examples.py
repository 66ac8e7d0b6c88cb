"""The examples run as the README says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_served_example_serves_the_store_given_and_revokes_its_token(tmp_path: Path) -> None:
    store = tmp_path / "served"
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "served.py"), "--store", str(store), "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"serving {store} at http://127.0.0.1:" in done.stdout
    assert "audit through the server: ok" in done.stdout

    listed = subprocess.run(
        [sys.executable, "-m", "asyncart", "ls", "demo", "--json", "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(listed.stdout)["name"] == "shards"  # the version went into that store
    tokens = json.loads((store / "tokens.json").read_text())
    assert tokens == {"tokens": []}  # the token it minted is revoked


def test_registry_example_links_once_and_downloads_from_the_source(tmp_path: Path) -> None:
    store = tmp_path / "store"
    for _ in range(2):  # the second run links the same model version: no new registry version
        done = subprocess.run(
            [sys.executable, str(EXAMPLES / "registry.py"), "--store", str(store)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert "linked registry/mnist-classifier:v0 -> demo/mnist-model:v0" in done.stdout
        assert "resolved registry/mnist-classifier:v0 (source mnist-model:v0)" in done.stdout
        assert "demo/mnist-model:v0 is linked from registry/mnist-classifier:v0" in done.stdout


def test_references_example_fetches_and_checks_the_references(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "references.py"), "--store", str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "logged demo/pets:v0: 3 references, 1 stored file" in done.stdout
    assert "downloaded 4 files to out/ (references verified)" in done.stdout
    assert "after a referenced file changed: IntegrityError: data/images/1.png" in done.stdout
