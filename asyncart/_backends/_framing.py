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
a torn head write leaves the other, previous, slot to fall back on.
"""

from __future__ import annotations

import struct
import zlib
from typing import Literal, NamedTuple

from .._errors import IntegrityError

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


def frames(payloads: list[bytes]) -> list[bytes]:
    """Frame the records of one append; all but the last carry the "more follow" flag."""
    out = []
    for i, payload in enumerate(payloads):
        if len(payload) > MAX_RECORD:
            raise IntegrityError(f"record of {len(payload)} bytes exceeds the {MAX_RECORD} limit")
        flag = _MORE if i < len(payloads) - 1 else 0
        head = struct.pack("<II", len(payload) | flag, zlib.crc32(payload))
        out.append(head + struct.pack("<I", zlib.crc32(head)) + payload)
    return out


class Scan(NamedTuple):
    offsets: list[int]  # absolute offset of each record of a complete append
    payloads: list[bytes]
    end: int  # absolute offset just past the last complete append
    torn: bool  # bytes after ``end`` are a torn (crashed or in-progress) append


def scan(data: bytes, base: int, first_seq: int, stream: str, mode: Mode = "legacy") -> Scan:
    """Parse the frames in ``data``, which starts at file offset ``base`` (an append boundary).

    Raises:
        LogDamage: a frame is damaged where ``mode`` says no torn write can be.
    """
    offsets: list[int] = []
    payloads: list[bytes] = []
    pending: list[tuple[int, bytes]] = []  # records of an append whose last frame is not seen yet
    view = memoryview(data)
    pos = 0

    def torn(why: str) -> Scan:
        if mode == "acknowledged":  # name the first record that is not whole
            seq = first_seq + len(payloads) + len(pending)
            raise LogDamage(stream, seq, f"{why}, but it was acknowledged (the log is damaged)")
        start = pending[0][0] - base if pending else pos
        return Scan(offsets, payloads, base + start, True)

    def damaged(why: str) -> Scan:
        if mode == "unacknowledged":  # garbage past the head: an append that never returned
            return torn(why)
        seq = first_seq + len(payloads) + len(pending)
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
        payload = bytes(view[pos + HEADER_SIZE : end])
        if zlib.crc32(payload) != crc:
            if end == len(data):
                return torn("record checksum mismatch")
            return damaged("record checksum mismatch")
        pending.append((base + pos, payload))
        pos = end
        if not more:
            offsets.extend(offset for offset, _ in pending)
            payloads.extend(payload for _, payload in pending)
            pending.clear()
    return torn("the record is missing") if pending else Scan(offsets, payloads, base + pos, False)


# -- the head: how many records a stream has acknowledged, and where they end ----------------

_SLOT = struct.Struct("<4sQQQ")  # magic, generation, record count, end offset; then a crc32
SLOT_SIZE = _SLOT.size + 4
_MAGIC = b"AHD1"


class Head(NamedTuple):
    """The durable end of a stream: ``records`` records, ending at byte ``end`` of its log."""

    generation: int  # written to slot ``generation % 2``; the higher valid one is current
    records: int
    end: int

    def advanced(self, records: int, end: int) -> Head:
        return Head(self.generation + 1, records, end)


def encode_head(head: Head) -> tuple[int, bytes]:
    """The slot offset to write ``head`` at, and its bytes."""
    body = _SLOT.pack(_MAGIC, *head)
    return (head.generation % 2) * SLOT_SIZE, body + struct.pack("<I", zlib.crc32(body))


def decode_head(data: bytes, stream: str) -> Head:
    """The current head in the two slots of ``data`` (a torn slot falls back to the other).

    Raises:
        LogDamage: neither slot is valid.
    """
    heads = []
    for at in (0, SLOT_SIZE):
        slot = data[at : at + SLOT_SIZE]
        if len(slot) == SLOT_SIZE and zlib.crc32(slot[:-4]) == struct.unpack("<I", slot[-4:])[0]:
            magic, *fields = _SLOT.unpack(slot[:-4])
            if magic == _MAGIC:
                heads.append(Head(*fields))
    if not heads:
        raise LogDamage(stream, None, "its head file is damaged (no valid slot)")
    return max(heads)
