"""A fresh PostgreSQL + S3 store per test: a new schema of the test database (``pg_dsn``) for
the log and a new prefix of the test bucket (``s3_url``) for the blobs."""

from __future__ import annotations

import pytest


@pytest.fixture
def pg_s3_store(pg_dsn: str, s3_url: str) -> str:
    """The store location, ``postgresql://...?search_path=t_...&blobs=s3://BUCKET/PREFIX``."""
    return f"{pg_dsn}{'&' if '?' in pg_dsn else '?'}blobs={s3_url}"
