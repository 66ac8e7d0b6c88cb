"""Record framing for the local log: ``length|flag | crc32(payload) | crc32(header) | payload``.

The top bit of the length says "more records of this append follow": readers accept the
records of an append only when its last frame is there, so a multi-record append is
all-or-nothing even when a crash persisted only part of it.

The header checksum tells a damaged length field from a torn tail: a crash can only leave an
incomplete *last* append (or zeros past it), which is truncated; anything else is corruption.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

from .._errors import IntegrityError

_HEADER = struct.Struct("<III")
HEADER_SIZE = _HEADER.size
MAX_RECORD = 1 << 30
_MORE = 1 << 31


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


def scan(data: bytes, base: int, first_seq: int, stream: str) -> Scan:
    """Parse the frames in ``data``, which starts at file offset ``base`` (an append boundary)."""
    offsets: list[int] = []
    payloads: list[bytes] = []
    pending: list[tuple[int, bytes]] = []  # records of an append whose last frame is not seen yet
    view = memoryview(data)
    pos = 0

    def torn() -> Scan:
        start = pending[0][0] - base if pending else pos
        return Scan(offsets, payloads, base + start, True)

    while pos < len(data):
        rest = len(data) - pos
        seq = first_seq + len(payloads) + len(pending)
        where = f"stream {stream!r} seq {seq} (byte {base + pos})"
        if rest < HEADER_SIZE or not any(view[pos:]):
            return torn()
        length, crc, head_crc = _HEADER.unpack_from(data, pos)
        if zlib.crc32(view[pos : pos + 8]) != head_crc:
            raise IntegrityError(f"{where}: frame header checksum mismatch (the log is damaged)")
        more, length = bool(length & _MORE), length & ~_MORE
        end = pos + HEADER_SIZE + length
        if end > len(data):
            return torn()
        payload = bytes(view[pos + HEADER_SIZE : end])
        if zlib.crc32(payload) != crc:
            if end == len(data):
                return torn()
            raise IntegrityError(f"{where}: record checksum mismatch (the log is damaged)")
        pending.append((base + pos, payload))
        pos = end
        if not more:
            offsets.extend(offset for offset, _ in pending)
            payloads.extend(payload for _, payload in pending)
            pending.clear()
    return torn() if pending else Scan(offsets, payloads, base + pos, False)
