"""Checkpoints: a collection's folded state saved beside its stream, so that an open reads the
checkpoint and the records after it instead of the stream from seq 0.

A checkpoint is derived, never the truth. Its bytes carry a BLAKE3 checksum, and it names the
head it was folded up to and the chain hash of the record before that head: a reader checks
that hash against the record in the log, then folds only the records after it. A lost, damaged
or foreign checkpoint (one whose record is not in this stream's chain) costs a longer read and
nothing else; ``audit`` re-folds every stream from seq 0 and names a checkpoint that disagrees.
"""

from __future__ import annotations

import blake3
import msgspec

from .._errors import IntegrityError
from .fold import CollectionState

CHECKPOINT_EVERY = 64
"""A checkpoint is due each time a stream's head passes a multiple of this many records."""

_MAGIC = b"ACP1"
_SUM = 32  # bytes of the BLAKE3 checksum that follows the magic
FORMAT = 3
"""Format 2 carries deletions (``Version.deleted``); format 3 collection deletions
(``CollectionState.deleted``), when each open draft was last touched (``Draft.updated``),
retention rules, versions' ``ttl`` (as committed and as edited), tags, edits and links
(``Version.link``). A checkpoint of another format is refused
and the records are folded: a newer one may hold what this release does not know, and an older
release skipped or dropped what format 3 carries, so its state may lack what the records say
(a longer read, once: the next checkpoint is of this format). A release before format 3 drops
what it does not know from the versions it folds, unseen: it should not write to a store that
uses it."""


class _Checkpoint(msgspec.Struct, frozen=True):
    format: int
    state: CollectionState


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Checkpoint)


def checkpoint_due(before: int, after: int) -> bool:
    """Whether a stream whose head moved from ``before`` to ``after`` should be checkpointed."""
    return before // CHECKPOINT_EVERY != after // CHECKPOINT_EVERY


def encode_checkpoint(state: CollectionState) -> bytes:
    """The checkpoint of a folded collection (at ``state.head``)."""
    body = _encoder.encode(_Checkpoint(FORMAT, state))
    return _MAGIC + blake3.blake3(body).digest() + body


def decode_checkpoint(data: bytes, stream: str) -> CollectionState:
    """The state a checkpoint of ``stream`` holds (to be checked against the log: see
    :func:`checkpoint_anchor`).

    Raises:
        IntegrityError: the bytes are damaged, or not a checkpoint of ``stream``.
    """
    where = f"the checkpoint of stream {stream!r}"
    header = len(_MAGIC) + _SUM
    if data[: len(_MAGIC)] != _MAGIC or len(data) < header:
        raise IntegrityError(f"{where} is not a checkpoint (damaged or of a newer release)")
    body = memoryview(data)[header:]
    if blake3.blake3(body).digest() != data[len(_MAGIC) : header]:
        raise IntegrityError(f"{where} fails its checksum (damaged)")
    try:
        checkpoint = _decoder.decode(body)
    except msgspec.DecodeError as e:
        raise IntegrityError(f"{where} does not decode: {e}") from None
    if checkpoint.format > FORMAT:
        raise IntegrityError(f"{where} has format {checkpoint.format} (of a newer release?)")
    if checkpoint.format < FORMAT:  # it may lack what format 3 carries: the records decide
        raise IntegrityError(f"{where} has format {checkpoint.format}, older than {FORMAT}")
    state = checkpoint.state
    if state.stream != stream or state.head < 1:
        raise IntegrityError(f"{where} is of stream {state.stream!r} at head {state.head}")
    return state


def checkpoint_anchor(state: CollectionState) -> tuple[int, str]:
    """(seq, chain hash) of the record a checkpointed state was folded up to and including:
    the log's record at that seq must hash to it."""
    return state.head - 1, state.last_hash
