"""Validation of user values stored in the log: metadata, config, description (pure).

Whatever is appended to a stream must decode again, forever: one bad value would make every
version of the stream unreadable. So values are checked (and copied) when they are given, before
anything is written, with the same rules as W&B: JSON-compatible, ``str`` keys, NaN stored as
null, infinities refused.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from ._errors import InvalidInputError

MAX_DEPTH = 64
"""How deeply metadata or config may nest (a dict or list in a dict is depth 2)."""

MAX_BYTES = 4 << 20
"""The most bytes metadata or config may take, encoded (4 MiB: it is read with every version)."""

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what msgpack can hold


def check_mapping(value: object, what: str) -> dict[str, Any] | None:
    """A deep, plain copy of ``value`` (a JSON-compatible dict, or None); else InvalidInputError.

    ``what`` names the argument in messages, e.g. ``metadata`` gives ``metadata['a'][3]``.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInputError(
            f"{what} must be a dict with str keys (or None), not {type(value).__name__}"
        )
    copied: dict[str, Any] = _copy(value, what, 1)
    size = len(msgspec.msgpack.encode(copied))
    if size > MAX_BYTES:
        raise InvalidInputError(
            f"{what} takes {size:,} bytes encoded, more than the {MAX_BYTES:,} allowed; "
            "store large data as a file of the artifact"
        )
    return copied


def check_description(value: object) -> str | None:
    """``value`` if it is a description (a str, or None); else InvalidInputError."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"description must be a str (or None), not {type(value).__name__}")
    return _text(value, "description")


def _copy(value: object, where: str, depth: int) -> Any:
    """A plain copy of one value at ``where``, nested ``depth`` containers deep."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise InvalidInputError(f"{where} = {value} is out of range (-2**63 to 2**64-1)")
        return int(value)  # an IntEnum or numpy int becomes a plain int
    if isinstance(value, float):
        if math.isinf(value):
            raise InvalidInputError(f"{where} is {value}: infinities cannot be stored (JSON)")
        return None if math.isnan(value) else float(value)  # NaN is stored as null, as W&B does
    if isinstance(value, str):
        return _text(value, where)
    if isinstance(value, (dict, list, tuple)):
        if depth > MAX_DEPTH:
            raise InvalidInputError(f"{where} nests more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise InvalidInputError(
                        f"{where} has the key {key!r} of type {type(key).__name__}; "
                        "keys must be str"
                    )
                out[_text(key, f"a key of {where}")] = _copy(item, f"{where}[{key!r}]", depth + 1)
            return out
        return [_copy(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise InvalidInputError(
        f"{where} is a {type(value).__name__}; use None, bool, int, float, str, list or dict"
    )


def _text(value: str, where: str) -> str:
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidInputError(f"{where} is not valid Unicode text (a lone surrogate)") from None
    return str.__str__(value)  # a str subclass (an Enum ...) becomes a plain str
