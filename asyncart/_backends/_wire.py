"""The HTTP protocol shared by the server and the client backend (``/v1``).

Bodies are msgpack (records are raw bytes; JSON would need base64); errors are JSON, so a
human with ``curl`` can read them::

    GET  /v1/health                               -> {"ok": true}            (no token)
    POST /v1/blobs/missing  [[digest, size], ...] -> [digest, ...]           (read)
    PUT  /v1/blobs/{digest}     raw bytes          -> {"size": n}             (write)
    GET  /v1/blobs/{digest}     Range supported    -> raw bytes               (read)
    POST /v1/blobs/batch   [[digest, bytes], ...] -> {"size": n}             (write)
    POST /v1/blobs/fetch   [digest, ...]          -> [bytes | None, ...]     (read)
    POST /v1/blobs/flush                          -> {}                      (write)
    POST /v1/uploads/{digest}?size=N              -> {"upload": id}          (write)
    GET  /v1/uploads/{digest}/{id}?size=N         -> {index: size}           (write)
    PUT  /v1/uploads/{digest}/{id}/{index}?size=N&offset=O -> {"size": n}    (write)
    POST /v1/uploads/{digest}/{id}/complete?size=N -> {"size": n}            (write)
    GET  /v1/limits                  -> {"max_request", "page_bytes", "max_staged"} (any)
    POST /v1/log/{stream}?expected_seq=N [bytes..] -> {"head": n}            (write project)
    POST /v1/log/{stream}?expected_seq=N {"parts": [[digest, size], ...]} -> {"head": n}
    GET  /v1/log/{stream}?from_seq=N&limit=L      -> {"records": [...], "more": bool}
    GET  /v1/streams?prefix=P                     -> [stream, ...]           (readable ones)
    GET  /v1/notes?prefix=P                       -> {stream: note}          (readable ones)
    GET  /v1/checkpoint/{stream}                  -> raw bytes (404: none)   (read project)
    GET  /v1/projects                             -> [project, ...]          (readable ones)
    POST /v1/tokens   {"projects", "write"}       -> {"token": ...}          (admin)

An append larger than ``max_request`` goes in parts: each a msgpack list of whole records,
uploaded as a blob; then one publish names the parts and appends them all or none
(``asyncart/_server/_staged.py``). A log page holds about ``page_bytes``;
``more`` is false once it reaches the stream's end. Notes and checkpoints are derived by the
server from the records it accepted; clients cannot write them.

Error bodies: ``{"error": CODE, "message": text, ...}``; a conflict adds ``"head"``. A body of
the wrong shape is a 400, one over the server's limit a 413 (checked on ``Content-Length``,
before it is read), a client that stalls a 408, a server busy with other bodies or connections
a 503 (retried), a full disk on the server a 507 (``insufficient_storage``: not retried).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec

MSGPACK = "application/msgpack"
PREFIX = "/v1"
DIGEST = re.compile(r"[0-9a-f]{64}")
TOKEN_ENV = "ASYNCART_TOKEN"

MAX_DIGESTS = 50_000
"""Digests per ``missing`` request (64 hex characters and a size each: ~3.8 MB)."""

SIZED_BYTES = 5 + MAX_DIGESTS * 76
"""The largest msgpack body of ``MAX_DIGESTS`` [digest, size] pairs (array header, then per
pair a 1-byte pair header, 2 + 64 bytes of digest and at most 9 of size)."""

Digest = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
Digests = list[Digest]
"""The body of ``/blobs/fetch``."""
Sized = Annotated[
    list[tuple[Digest, Annotated[int, msgspec.Meta(ge=0)]]], msgspec.Meta(max_length=MAX_DIGESTS)
]
"""The body of ``/blobs/missing``: at most ``MAX_DIGESTS`` ``[digest, size]`` pairs."""
Batch = list[tuple[Digest, bytes]]
"""The body of ``/blobs/batch``: ``[[digest, bytes], ...]``."""
Records = list[bytes]
"""The body of a log append: the records, as opaque bytes."""


MAX_PARTS = 4096
"""Parts one publish may name (clients send parts of 8 MiB: a 512 MiB append has 64)."""


class Published(msgspec.Struct, forbid_unknown_fields=True):
    """The body of a log append whose records are in blobs: the parts, in order, as
    ``[digest, size]`` pairs, each blob a msgpack list of records (as a posted append)."""

    parts: Annotated[
        list[tuple[Digest, Annotated[int, msgspec.Meta(ge=0)]]],
        msgspec.Meta(min_length=1, max_length=MAX_PARTS),
    ]


class GcBody(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /gc``."""

    grace: Annotated[float, msgspec.Meta(ge=0)]
    dry_run: bool = False
    now: float | None = None  # when ttl, rules and drafts' expiry are judged (None: the server's)
    draft_ttl: Annotated[float, msgspec.Meta(ge=0)] | None = None  # absent: no draft expires
    project: str | None = None  # whose rules and drafts only (marks span every project)


class MintBody(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /tokens``."""

    projects: list[str]
    write: bool = False
    note: str = ""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


def pack(value: Any) -> bytes:
    """Encode a response or request body."""
    return _encoder.encode(value)


def unpack(data: bytes) -> Any:
    """Decode a body; raises ``msgspec.DecodeError`` on garbage."""
    return _decoder.decode(data)


def project_of(stream: str) -> str:
    """The project a stream belongs to: its first path component."""
    return stream.split("/", 1)[0]
