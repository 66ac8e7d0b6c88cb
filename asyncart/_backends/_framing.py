"""Record framing for the local log: ``length|flag | crc32(payload) | crc32(header) | payload``.

The top bit of the length says "more records of this append follow": readers accept the
records of an append only when its last frame is there, so a multi-record append is
all-or-nothing even when a crash persisted only part of it.

The header checksum tells a damaged length field from a torn tail. Which bytes may be torn is
the caller's to say (``Mode``): the records a stream's head acknowledges must all be whole
("acknowledged"), the bytes past the head are an append that never returned and may be anything
("unacknowledged"); a log of the previous release, without a head, may end in a torn append but
is damaged anywhere else ("legacy").

The head itself (``NAME.head`` beside ``NAME.log``) is two checksummed slots written in turn, so
a torn head write leaves the other, previous, slot to fall back on. A slot also carries the
stream's note, so the note and the records it describes are published by the same write. Heads
of the previous release (``AHD1``: small slots, no note) are still read; the log rewrites them
whole in the current layout (``AHD2``) before it next appends.

``NAME.idx`` (see ``encode_entries``) maps seq to offset; it is derived, written after the
head, never synced, and checked against the log before use.
"""

from __future__ import annotations

import struct
import zlib
from typing import Literal, NamedTuple

from .._errors import IntegrityError
from .base import MAX_NOTE

_HEADER = struct.Struct("<III")
HEADER_SIZE = _HEADER.size
MAX_RECORD = 1 << 30
_MORE = 1 << 31

Mode = Literal["acknowledged", "unacknowledged", "legacy"]


class LogDamage(IntegrityError):
    """A stream's log is damaged at ``seq`` (None: the stream as a whole, e.g. its head)."""

    def __init__(self, stream: str, seq: int | None, detail: str, byte: int | None = None) -> None:
        where = f"stream {stream!r}" + ("" if seq is None else f" seq {seq}")
        where += "" if byte is None else f" (byte {byte})"
        super().__init__(f"{where}: {detail}")
        self.stream, self.seq = stream, seq


def frame_headers(payloads: list[bytes]) -> list[bytes]:
    """The frame headers of one append's records (each goes just before its payload); all but
    the last carry the "more follow" flag."""
    out = []
    for i, payload in enumerate(payloads):
        if len(payload) > MAX_RECORD:
            raise IntegrityError(f"record of {len(payload)} bytes exceeds the {MAX_RECORD} limit")
        flag = _MORE if i < len(payloads) - 1 else 0
        head = struct.pack("<II", len(payload) | flag, zlib.crc32(payload))
        out.append(head + struct.pack("<I", zlib.crc32(head)))
    return out


def frames(payloads: list[bytes]) -> list[bytes]:
    """The framed records of one append."""
    return [h + p for h, p in zip(frame_headers(payloads), payloads, strict=True)]


class Scan(NamedTuple):
    offsets: list[int]  # absolute offset of each record of a complete append
    payloads: list[bytes]
    end: int  # absolute offset just past the last complete append
    torn: bool  # bytes after ``end`` are a torn (crashed or in-progress) append
    checks: list[int]  # each record's frame header checksum (what ``NAME.idx`` keeps)


def scan(
    data: bytes,
    base: int,
    first_seq: int,
    stream: str,
    mode: Mode = "legacy",
    *,
    whole_appends: bool = True,
    keep: bool = True,
) -> Scan:
    """Parse the frames in ``data``, which starts at file offset ``base`` (an append boundary).

    With ``whole_appends=False`` (acknowledged records only) ``data`` may start and end at any
    record boundary, inside an append: every record there was acknowledged, so each whole
    frame counts on its own. With ``keep=False`` the records are only checked: ``payloads``
    is left empty (a check of a whole log then copies none of it).

    Raises:
        LogDamage: a frame is damaged where ``mode`` says no torn write can be.
    """
    offsets: list[int] = []
    payloads: list[bytes] = []
    checks: list[int] = []
    pending: list[tuple[int, bytes, int]] = []  # records of an append not yet seen whole
    view = memoryview(data)
    pos = 0

    def torn(why: str) -> Scan:
        if mode == "acknowledged":  # name the first record that is not whole
            seq = first_seq + len(offsets) + len(pending)
            raise LogDamage(stream, seq, f"{why}, but it was acknowledged (the log is damaged)")
        start = pending[0][0] - base if pending else pos
        return Scan(offsets, payloads, base + start, True, checks)

    def damaged(why: str) -> Scan:
        if mode == "unacknowledged":  # garbage past the head: an append that never returned
            return torn(why)
        seq = first_seq + len(offsets) + len(pending)
        raise LogDamage(stream, seq, f"{why} (the log is damaged)", base + pos)

    while pos < len(data):
        rest = len(data) - pos
        if rest < HEADER_SIZE or not any(view[pos:]):
            return torn("the record is incomplete")
        length, crc, head_crc = _HEADER.unpack_from(data, pos)
        if zlib.crc32(view[pos : pos + 8]) != head_crc:
            return damaged("frame header checksum mismatch")
        more, length = bool(length & _MORE), length & ~_MORE
        end = pos + HEADER_SIZE + length
        if end > len(data):
            return torn("the record is incomplete")
        payload = view[pos + HEADER_SIZE : end]
        if zlib.crc32(payload) != crc:
            if end == len(data):
                return torn("record checksum mismatch")
            return damaged("record checksum mismatch")
        pending.append((base + pos, bytes(payload) if keep else b"", head_crc))
        pos = end
        if not more or not whole_appends:
            offsets.extend(offset for offset, _, _ in pending)
            if keep:
                payloads.extend(payload for _, payload, _ in pending)
            checks.extend(check for _, _, check in pending)
            pending.clear()
    if pending:
        return torn("the record is missing")
    return Scan(offsets, payloads, base + pos, False, checks)


def frame_check(header: bytes) -> int | None:
    """The checksum of the frame header ``header`` (its first bytes), None if it is not one."""
    if len(header) < HEADER_SIZE:
        return None
    _, _, head_crc = _HEADER.unpack_from(header)
    return head_crc if zlib.crc32(header[:8]) == head_crc else None


# -- the head: how many records a stream has acknowledged, where they end, and its note ------

# magic, generation, records, end, note length; the note; padding; at the slot's end a crc32 of
# all but the padding (a listing decodes a slot per stream: its cost follows the note's size)
_SLOT = struct.Struct("<4sQQQH")
SLOT_SIZE = 2048  # two slots make a head file of one page
HEAD_SIZE = 2 * SLOT_SIZE
_MAGIC = b"AHD2"
_NOTE_ROOM = SLOT_SIZE - _SLOT.size - 4
assert MAX_NOTE <= _NOTE_ROOM

_V1_SLOT = struct.Struct("<4sQQQ")  # the previous release's: no note; then a crc32
_V1_SLOT_SIZE = _V1_SLOT.size + 4
_V1_MAGIC = b"AHD1"


class Head(NamedTuple):
    """The durable end of a stream: ``records`` records, ending at byte ``end`` of its log."""

    generation: int  # written to slot ``generation % 2``; the higher valid one is current
    records: int
    end: int
    note: bytes = b""  # published with these records (see ``EventLog.append``)

    def advanced(self, records: int, end: int, note: bytes | None = None) -> Head:
        """The next head; it keeps this one's note unless given another."""
        return Head(self.generation + 1, records, end, self.note if note is None else note)


def encode_head(head: Head) -> tuple[int, bytes]:
    """The slot offset to write ``head`` at, and its bytes (a whole slot)."""
    if len(head.note) > _NOTE_ROOM:
        raise ValueError(f"a note of {len(head.note)} bytes does not fit in a head slot")
    body = _SLOT.pack(_MAGIC, head.generation, head.records, head.end, len(head.note)) + head.note
    crc = struct.pack("<I", zlib.crc32(body))
    return (head.generation % 2) * SLOT_SIZE, body.ljust(SLOT_SIZE - 4, b"\0") + crc


def encode_head_file(head: Head) -> bytes:
    """A whole head file holding ``head`` (in its slot; the other one blank)."""
    offset, slot = encode_head(head)
    return bytes(offset) + slot + bytes(SLOT_SIZE - offset)


def is_current_layout(data: bytes) -> bool:
    """Whether the head file ``data`` (read whole) is in the current layout, not ``AHD1``.

    The layouts are told apart by size: a previous release's head file is at most two small
    slots, a current one is a page (written whole, then only overwritten in place). A note's
    bytes can then never be mistaken for an old slot."""
    return len(data) > 2 * _V1_SLOT_SIZE


def decode_head(data: bytes, stream: str) -> Head:
    """The current head in the two slots of ``data`` (a torn slot falls back to the other).

    Raises:
        LogDamage: neither slot is valid.
    """
    slots = _current_slots(data) if is_current_layout(data) else _v1_slots(data)
    heads = [head for head in slots if head is not None]
    if not heads:
        raise LogDamage(stream, None, "its head file is damaged (no valid slot)")
    return max(heads)


def _current_slots(data: bytes) -> list[Head | None]:
    return [_current_slot(data[at : at + SLOT_SIZE]) for at in (0, SLOT_SIZE)]


def _current_slot(slot: bytes) -> Head | None:
    if len(slot) != SLOT_SIZE:
        return None
    magic, generation, records, end, size = _SLOT.unpack_from(slot)
    used = _SLOT.size + size
    if magic != _MAGIC or size > _NOTE_ROOM:
        return None
    if zlib.crc32(slot[:used]) != struct.unpack_from("<I", slot, SLOT_SIZE - 4)[0]:
        return None
    return Head(generation, records, end, slot[_SLOT.size : used])


def head_note(data: bytes) -> bytes | None:
    """The note of the current head in the head file ``data`` (read whole), or None if it
    has no valid slot: ``decode_head(data, ...).note`` with the same checks, faster.

    Only the slot that ``decode_head`` would pick is checksummed: the slots whose magic and
    note length are plausible are tried from the highest head down, and the first whose
    checksum holds is the highest valid one. A previous release's head has no note (b"").
    """
    if not is_current_layout(data):
        return b"" if any(head is not None for head in _v1_slots(data)) else None
    candidates = []
    for at in (0, SLOT_SIZE):
        if len(data) < at + SLOT_SIZE:
            continue
        magic, generation, records, end, size = _SLOT.unpack_from(data, at)
        if magic == _MAGIC and size <= _NOTE_ROOM:
            note = data[at + _SLOT.size : at + _SLOT.size + size]
            candidates.append((generation, records, end, note, at, size))
    candidates.sort(reverse=True)
    for *_, note, at, size in candidates:
        used = at + _SLOT.size + size
        crc = _CRC.unpack_from(data, at + SLOT_SIZE - 4)[0]
        if zlib.crc32(memoryview(data)[at:used]) == crc:
            return note
    return None


_CRC = struct.Struct("<I")


def is_blank(data: bytes) -> bool:
    """Whether a head file holds nothing but zeros (never written: every slot has a magic)."""
    return data == bytes(len(data))


def _v1_slots(data: bytes) -> list[Head | None]:
    heads: list[Head | None] = []
    for at in (0, _V1_SLOT_SIZE):
        slot = data[at : at + _V1_SLOT_SIZE]
        if (
            len(slot) == _V1_SLOT_SIZE
            and zlib.crc32(slot[:-4]) == struct.unpack("<I", slot[-4:])[0]
        ):
            magic, *fields = _V1_SLOT.unpack(slot[:-4])
            heads.append(Head(*fields) if magic == _V1_MAGIC else None)
    return heads


# -- the index: where each record starts (derived, advisory) ----------------------------------

_ENTRY = struct.Struct("<QII")  # offset, the frame's header checksum, crc32 of (seq, the two)
ENTRY_SIZE = _ENTRY.size


class Entry(NamedTuple):
    """Where record ``seq`` starts, and its frame's header checksum (to recognize it there)."""

    offset: int
    check: int


def encode_entries(first: int, offsets: list[int], checks: list[int]) -> bytes:
    """The index entries of records ``first``, ``first + 1``, ... (written at ``first``)."""
    out = bytearray()
    for seq, (offset, check) in enumerate(zip(offsets, checks, strict=True), first):
        out += _ENTRY.pack(offset, check, _entry_crc(seq, offset, check))
    return bytes(out)


def decode_entry(data: bytes, seq: int) -> Entry | None:
    """The index entry ``data`` of record ``seq``, None if it is short, torn or another's.

    Its checksum covers the seq, so zeros, a torn write or an entry at the wrong place never
    pass; the caller still checks that the log holds that frame at that offset."""
    if len(data) != ENTRY_SIZE:
        return None
    offset, check, crc = _ENTRY.unpack(data)
    return Entry(offset, check) if crc == _entry_crc(seq, offset, check) else None


def _entry_crc(seq: int, offset: int, check: int) -> int:
    return zlib.crc32(struct.pack("<QQI", seq, offset, check))
