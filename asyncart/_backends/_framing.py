"""Record framing for the local log: ``length | crc32(payload) | crc32(header) | payload``.

The header checksum tells a damaged length field from a torn tail: a crash can only leave an
incomplete *last* frame (or zeros past it), which is truncated; anything else is corruption.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

from .._errors import IntegrityError

_HEADER = struct.Struct("<III")
HEADER_SIZE = _HEADER.size
MAX_RECORD = 1 << 30


def frame(payload: bytes) -> bytes:
    if len(payload) > MAX_RECORD:
        raise IntegrityError(f"record of {len(payload)} bytes exceeds the {MAX_RECORD} limit")
    head = struct.pack("<II", len(payload), zlib.crc32(payload))
    return head + struct.pack("<I", zlib.crc32(head)) + payload


class Scan(NamedTuple):
    offsets: list[int]  # absolute offset of each complete frame
    payloads: list[bytes]
    end: int  # absolute offset just past the last complete frame
    torn: bool  # bytes after ``end`` are a torn (crashed) write


def scan(data: bytes, base: int, first_seq: int, stream: str) -> Scan:
    """Parse the frames in ``data`` (which starts at file offset ``base``)."""
    offsets: list[int] = []
    payloads: list[bytes] = []
    view = memoryview(data)
    pos = 0
    while pos < len(data):
        rest = len(data) - pos
        where = f"stream {stream!r} seq {first_seq + len(payloads)} (byte {base + pos})"
        if rest < HEADER_SIZE or not any(view[pos:]):
            return Scan(offsets, payloads, base + pos, True)
        length, crc, head_crc = _HEADER.unpack_from(data, pos)
        if zlib.crc32(view[pos : pos + 8]) != head_crc:
            raise IntegrityError(f"{where}: frame header checksum mismatch (the log is damaged)")
        end = pos + HEADER_SIZE + length
        if end > len(data):
            return Scan(offsets, payloads, base + pos, True)
        payload = bytes(view[pos + HEADER_SIZE : end])
        if zlib.crc32(payload) != crc:
            if end == len(data):
                return Scan(offsets, payloads, base + pos, True)
            raise IntegrityError(f"{where}: record checksum mismatch (the log is damaged)")
        offsets.append(base + pos)
        payloads.append(payload)
        pos = end
    return Scan(offsets, payloads, base + pos, False)
