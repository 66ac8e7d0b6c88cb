"""Parsing the values of arguments: times, seqs, fractions and names."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta

_AGO = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str) -> datetime:
    """A point in time: ISO 8601 (UTC unless it has an offset), ``@UNIX_SECONDS`` or ``2h`` ago."""
    if match := _AGO.fullmatch(text.strip()):
        return datetime.now(UTC) - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        if text.startswith("@"):
            return datetime.fromtimestamp(float(text[1:]), UTC)
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: use ISO 8601 (2026-11-27T19:40:00Z), @UNIX_SECONDS or 2h"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def parse_duration(text: str) -> float:
    """A duration in seconds: ``90s``, ``30m``, ``1h``, ``7d``, ``2w`` or a plain number."""
    if match := _AGO.fullmatch(text.strip()):
        return timedelta(**{_UNITS[match[2]]: int(match[1])}).total_seconds()
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use 30m, 1h, 7d or seconds")
    return value


def parse_as_of(text: str) -> datetime | int:
    """``--as-of``: a seq (a plain integer) or a time (see :func:`parse_time`)."""
    return int(text) if text.isdigit() else parse_time(text)


def parse_fraction(text: str) -> float:
    """``10%`` or ``0.1`` -> 0.1."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"invalid subset {text!r}: use a percentage like 10%")
    return value


def split_name(text: str, project: str) -> tuple[str, str]:
    """``[[entity/]project/]name`` -> (project, name), the project defaulting to ``project``
    (an entity, as in a W&B path, is ignored: see ``parse_ref``)."""
    owner, _, name = text.rpartition("/")
    owner = owner.rpartition("/")[2] if owner.count("/") == 1 else owner
    return owner or project, name
