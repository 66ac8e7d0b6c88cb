"""Output: results on stdout (text, quiet or JSON), progress bars and errors on stderr."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, TextIO

import asyncart


class ProgressBar:
    """Draws :class:`asyncart.Progress` on one line of stderr: files, bytes, rate, ETA.

    It remembers the last ``Progress`` (``last``) even when it draws nothing, so a command can
    report totals, such as the bytes an upload actually stored.
    """

    def __init__(self, label: str, stream: TextIO, enabled: bool) -> None:
        self.label, self.stream, self.enabled = label, stream, enabled
        self.last: asyncart.Progress | None = None
        self._start = time.monotonic()
        self._drawn = 0.0

    def __call__(self, progress: asyncart.Progress) -> None:
        self.last = progress
        now = time.monotonic()
        finished = progress.files_done == progress.files_total
        if self.enabled and (finished or now - self._drawn >= 0.1):
            self._drawn = now
            self.stream.write(f"\r{self.render(progress, now - self._start)}\x1b[K")
            self.stream.flush()

    def render(self, p: asyncart.Progress, elapsed: float) -> str:
        """``label: 3/10 files, 1.0 MiB/4.0 MiB (25%), 2.0 MiB/s, ETA 2s``."""
        percent = 100 * p.bytes_done // p.bytes_total if p.bytes_total else 100
        rate = p.bytes_done / elapsed if elapsed > 0 else 0.0
        eta = f"{(p.bytes_total - p.bytes_done) / rate:.0f}s" if rate else "?"
        return (
            f"{self.label}: {p.files_done}/{p.files_total} files, "
            f"{human_bytes(p.bytes_done)}/{human_bytes(p.bytes_total)} ({percent}%), "
            f"{human_bytes(int(rate))}/s, ETA {eta}"
        )

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


class AuditBar:
    """Draws an audit's progress on one line of stderr: streams, records, versions and blobs
    checked, and with ``--read-data`` the blobs read. One line for both of the audit's
    callbacks (:meth:`checked`, :meth:`read`), since blob reads happen between streams."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream, self.enabled = stream, enabled
        self.last: asyncart.AuditProgress | None = None
        self.reading: asyncart.Progress | None = None
        self._drawn = 0.0

    def checked(self, progress: asyncart.AuditProgress) -> None:
        self.last = progress
        self._draw(progress.streams_done == progress.streams_total)

    def read(self, progress: asyncart.Progress) -> None:
        self.reading = progress
        self._draw(False)

    def _draw(self, finished: bool) -> None:
        now = time.monotonic()
        if self.enabled and self.last is not None and (finished or now - self._drawn >= 0.1):
            self._drawn = now
            self.stream.write(f"\r{self.render()}\x1b[K")
            self.stream.flush()

    def render(self) -> str:
        """``auditing: 3/10 streams, 1,234 records, 12 versions, 345 blobs, 1 problem``."""
        p = self.last
        assert p is not None
        text = (
            f"auditing: {p.streams_done}/{p.streams_total} streams, {p.records:,} records, "
            f"{p.versions:,} versions, {p.blobs:,} blobs"
        )
        if (r := self.reading) is not None:
            text += (
                f" ({r.files_done:,}/{r.files_total:,} read, "
                f"{human_bytes(r.bytes_done)}/{human_bytes(r.bytes_total)})"
            )
        if p.problems:
            text += f", {p.problems} problem{'' if p.problems == 1 else 's'}"
        return text

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


class CopyBar:
    """Draws a copy's progress on one line of stderr."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream, self.enabled = stream, enabled
        self._drawn = 0.0

    def __call__(self, p: asyncart.CopyProgress) -> None:
        now = time.monotonic()
        finished = p.streams_done == p.streams_total
        if self.enabled and (finished or now - self._drawn >= 0.1):
            self._drawn = now
            self.stream.write(
                f"\rcopying: {p.streams_done}/{p.streams_total} streams, {p.records:,} records, "
                f"{p.blobs:,} blobs ({human_bytes(p.bytes)})\x1b[K"
            )
            self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


class GcBar:
    """Draws a garbage collection's progress (:data:`asyncart._gc.Progress`) on one line of
    stderr: its phase, and how far it is through it."""

    _UNITS: ClassVar = {"rules": "collections", "mark": "collections", "sweep": "shards"}
    _VERBS: ClassVar = {"rules": "applying rules", "mark": "marking", "sweep": "sweeping"}

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream, self.enabled = stream, enabled
        self._drawn, self._phase = 0.0, ""

    def __call__(self, phase: str, done: int, total: int) -> None:
        now, new = time.monotonic(), phase != self._phase
        if not self.enabled or not (new or done == total or now - self._drawn >= 0.1):
            return
        if new and self._drawn:
            self.stream.write("\n")  # each phase keeps its last line
        self._drawn, self._phase = now, phase
        verb, unit = self._VERBS.get(phase, "removing"), self._UNITS.get(phase, "blobs")
        self.stream.write(f"\r{verb}: {done:,}/{total:,} {unit}\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


@dataclass
class Console:
    """Where a command's output goes, and how much of it (``--quiet``, ``--json``)."""

    out: TextIO
    err: TextIO
    quiet: bool = False
    as_json: bool = False
    show_progress: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Console:
        tty = sys.stderr.isatty() and not (args.quiet or args.json)
        return cls(sys.stdout, sys.stderr, args.quiet, args.json, args.progress or tty)

    def result(self, human: str | None, data: Any, brief: str | None = None) -> None:
        """Print a result: ``data`` as JSON, ``brief`` when quiet, else ``human``."""
        if self.as_json:
            self.json(data)
        elif (text := brief if self.quiet else human) is not None:
            print(text, file=self.out)

    def json(self, data: Any) -> None:
        print(json.dumps(data, default=_json_default), file=self.out)

    def json_lines(self, lines: Sequence[str]) -> None:
        """Print JSON texts encoded already, one a line (as many ``json`` calls would)."""
        self.lines(lines)

    def lines(self, lines: Sequence[str]) -> None:
        """Print ``lines``, one a line, in one write."""
        if lines:
            self.out.write("\n".join(lines) + "\n")

    def error(self, message: str) -> None:
        print(f"asyncart: error: {message}", file=self.err)

    @contextmanager
    def copy_progress(self) -> Iterator[CopyBar]:
        bar = CopyBar(self.err, self.show_progress)
        try:
            yield bar
        finally:
            bar.close()

    @contextmanager
    def gc_progress(self) -> Iterator[GcBar]:
        bar = GcBar(self.err, self.show_progress)
        try:
            yield bar
        finally:
            bar.close()

    @contextmanager
    def audit_progress(self) -> Iterator[AuditBar]:
        bar = AuditBar(self.err, self.show_progress)
        try:
            yield bar
        finally:
            bar.close()

    @contextmanager
    def progress(self, label: str) -> Iterator[ProgressBar]:
        bar = ProgressBar(label, self.err, self.show_progress)
        try:
            yield bar
        finally:
            bar.close()


def human_bytes(n: int) -> str:
    """``999 B``, ``1.5 KiB``, ``20.0 MiB`` ..."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_time(when: datetime | None) -> str:
    """``2024-05-01T12:00:00Z`` (UTC, to the second), or ``-``."""
    if when is None:
        return "-"
    if when.tzinfo is not UTC:  # the API's times are UTC already: no conversion to pay for
        when = when.astimezone(UTC)
    return when.isoformat()[:19] + "Z"  # as timespec="seconds" cuts; faster than strftime


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """Left-aligned columns, two spaces apart, each line stripped of trailing spaces."""
    columns = [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * len(headers)
    return column_table(columns, headers)


def column_table(columns: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """``table`` of the rows these ``columns`` hold (each a list of cells, one per row).

    Padded a column at a time, not a line at a time: ``ls`` may print a line per artifact of
    a large store. The last column needs no padding when it would be stripped again."""
    cells = [[header, *column] for header, column in zip(headers, columns, strict=True)]
    *padded, last = cells
    padded = [_padded(column) for column in padded]
    lines = map("  ".join, zip(*padded, last, strict=True)) if padded else iter(last)
    if all(cell and not cell[-1].isspace() for cell in last):  # then no line ends in space
        return "\n".join(lines)
    return "\n".join(line.rstrip() for line in lines)


def _padded(column: list[str]) -> list[str]:
    width = max(map(len, column))
    return [cell.ljust(width) for cell in column]


def _json_default(value: object) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")
