"""Validation of project and artifact names, references and entry paths (pure)."""

from __future__ import annotations

import re
from typing import NamedTuple

from ._errors import InvalidInputError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_VERSION = re.compile(r"v(0|[1-9][0-9]*)")
_VERSION_LIKE = re.compile(r"v[0-9]+")


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a valid project or artifact name, else raise InvalidInputError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInputError(
            f"invalid {what} {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_alias(alias: str) -> str:
    """Return ``alias`` if it is a valid alias (a name that is not a version like ``v3``)."""
    check_name(alias, "alias")
    if _VERSION_LIKE.fullmatch(alias):
        raise InvalidInputError(f"invalid alias {alias!r}: 'vN' is reserved for version numbers")
    return alias


def check_entry_path(path: str) -> str:
    """Return ``path`` if it is a safe relative POSIX path inside an artifact.

    Rejected: empty paths, NUL, backslashes, absolute paths, empty segments (``a//b``, ``a/``)
    and ``.`` or ``..`` segments, so that no entry can ever point outside a download root.
    """
    if not isinstance(path, str) or not path:
        raise InvalidInputError("invalid entry path '': it must be a non-empty relative path")
    problem = None
    if "\x00" in path:
        problem = "it contains a NUL byte"
    elif "\\" in path:
        problem = "it contains a backslash (use '/' as separator)"
    elif path.startswith("/"):
        problem = "it is absolute (entry paths are relative to the artifact root)"
    elif any(part in ("", ".", "..") for part in path.split("/")):
        problem = "it has an empty, '.' or '..' segment"
    if problem:
        raise InvalidInputError(f"invalid entry path {path!r}: {problem}")
    return path


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` (a directory like ``images/``) if its directory part is a safe path."""
    check_entry_path(prefix.rstrip("/") if prefix.endswith("/") else prefix)
    return prefix


class Ref(NamedTuple):
    """A parsed ``[project/]name[:alias|:vN]`` reference."""

    project: str | None
    name: str
    version: int | None  # set for ':vN'
    alias: str | None  # set otherwise ('latest' by default)


def parse_ref(ref: str) -> Ref:
    """Parse ``[project/]name[:alias|:vN]``; the alias defaults to ``latest``."""
    body, colon, tag = ref.partition(":")
    project, slash, name = body.rpartition("/")
    check_name(name, "artifact name")
    if slash:
        check_name(project, "project")
    if colon and not tag:
        raise InvalidInputError(f"invalid reference {ref!r}: nothing after ':'")
    tag = tag or "latest"
    if _VERSION.fullmatch(tag):
        return Ref(project or None, name, int(tag[1:]), None)
    return Ref(project or None, name, None, check_alias(tag) if tag != "latest" else tag)
