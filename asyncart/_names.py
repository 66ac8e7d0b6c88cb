"""Validation of project and artifact names, references and entry paths (pure)."""

from __future__ import annotations

import re
from collections.abc import Container, Iterable
from typing import NamedTuple

from ._errors import InvalidInputError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_VERSION = re.compile(r"v(0|[1-9][0-9]*)")
_VERSION_LIKE = re.compile(r"v[0-9]+")
_MAX_VERSION_DIGITS = 18  # more versions than any stream can hold


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


_TAG = re.compile(r"[A-Za-z0-9_.-]+(?: +[A-Za-z0-9_.-]+)*")
MAX_TAG_CHARS = 128
MAX_TAGS = 256  # tags are read with every version: a version is not a place for a list


def check_tag(tag: object) -> str:
    """Return ``tag`` if it is a valid tag: 1-128 letters, digits, '_', '.', '-' and inner
    spaces (as W&B's, in ASCII); else raise InvalidInputError."""
    if not isinstance(tag, str) or len(tag) > MAX_TAG_CHARS or not _TAG.fullmatch(tag):
        shown = tag[:140] if isinstance(tag, str) else tag
        raise InvalidInputError(
            f"invalid tag {shown!r}: use 1-{MAX_TAG_CHARS} letters, digits, '_', '.', '-' "
            "and spaces between them"
        )
    return tag


def check_tags(tags: object) -> list[str]:
    """The valid tags of ``tags`` (a list or tuple of str), each once, in their order; else
    InvalidInputError."""
    if isinstance(tags, str) or not isinstance(tags, list | tuple):
        raise InvalidInputError(
            f"tags must be a list of str, not {type(tags).__name__} (a str is one tag: [tag])"
        )
    checked = list(dict.fromkeys(check_tag(tag) for tag in tags))
    if len(checked) > MAX_TAGS:
        raise InvalidInputError(f"{len(checked)} tags: a version holds at most {MAX_TAGS}")
    return checked


MAX_SEGMENT_BYTES = 255  # NAME_MAX of Linux, macOS and Windows filesystems
MAX_PATH_BYTES = 4096  # PATH_MAX of Linux: a longer entry path could never be downloaded


def check_entry_path(path: str) -> str:
    """Return ``path`` if it is a safe relative POSIX path inside an artifact.

    Rejected: empty paths, NUL, backslashes, absolute paths, empty segments (``a//b``, ``a/``)
    and ``.`` or ``..`` segments, so that no entry can ever point outside a download root; and
    names no filesystem can hold: not UTF-8 (a file name ``os.scandir`` decoded with surrogate
    escapes), a segment over 255 bytes or a path over 4,096 bytes (in UTF-8).
    """
    if not isinstance(path, str) or not path:
        raise InvalidInputError(f"invalid entry path {path!r}: it must be a non-empty str")
    problem = None
    try:
        size = len(path.encode())
    except UnicodeEncodeError:
        raise InvalidInputError(
            f"invalid entry path {_shown(path)}: it is not valid UTF-8 (rename the file)"
        ) from None
    if "\x00" in path:
        problem = "it contains a NUL byte"
    elif "\\" in path:
        problem = "it contains a backslash (use '/' as separator)"
    elif path.startswith("/"):
        problem = "it is absolute (entry paths are relative to the artifact root)"
    elif size > MAX_PATH_BYTES:
        problem = f"it is {size} bytes long, over the {MAX_PATH_BYTES} a filesystem path may have"
    else:
        problem = _segment_problem(path, size)
    if problem:
        shown = path if len(path) <= 240 else f"{path[:120]}...{path[-120:]}"  # 4 KB is no help
        raise InvalidInputError(f"invalid entry path {shown!r}: {problem}")
    return path


def _segment_problem(path: str, size: int) -> str | None:
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "it has an empty, '.' or '..' segment"
    if size > MAX_SEGMENT_BYTES:  # else no segment can be longer (the common, cheap case)
        for part in parts:
            if (length := len(part.encode())) > MAX_SEGMENT_BYTES:
                return (
                    f"its segment {part[:40]!r}... is {length} bytes long, over the "
                    f"{MAX_SEGMENT_BYTES} a file name may have"
                )
    return None


def _shown(path: str) -> str:
    """A name with undecodable bytes, shown as the bytes it was on disk."""
    try:
        return repr(path.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:  # a lone surrogate that came from no file name
        return ascii(path)


def parents(path: str) -> list[str]:
    """The directories an entry path implies: ``a`` and ``a/b`` for ``a/b/c``."""
    out = []
    cut = path.find("/")
    while cut != -1:
        out.append(path[:cut])
        cut = path.find("/", cut + 1)
    return out


class PathTree:
    """The directories the entry paths of a draft imply, counted, so that a path that would be
    both a file and a directory (``x`` beside ``x/y``, which no filesystem can hold) is found in
    O(depth) per path, whatever the number of entries."""

    def __init__(self, paths: Iterable[str] = ()) -> None:
        self._dirs: dict[str, int] = {}
        for path in paths:
            self.add(path)

    def add(self, path: str) -> None:
        dirs = self._dirs
        for folder in parents(path):
            dirs[folder] = dirs.get(folder, 0) + 1

    def discard(self, path: str) -> None:
        dirs = self._dirs
        for folder in parents(path):
            if (count := dirs[folder] - 1) > 0:
                dirs[folder] = count
            else:
                del dirs[folder]

    def is_dir(self, path: str) -> bool:
        return path in self._dirs


def check_file_or_dir(path: str, files: Container[str], tree: PathTree, where: str) -> None:
    """Refuse ``path`` if it is a directory of ``files``, or one of its parents is a file."""
    if tree.is_dir(path):
        raise InvalidInputError(
            f"cannot add {path!r} to {where}: it is already a directory there "
            "(a path cannot be both a file and a directory); remove() it first"
        )
    for folder in parents(path):
        if folder in files:
            raise InvalidInputError(
                f"cannot add {path!r} to {where}: {folder!r} is a file there "
                "(a path cannot be both a file and a directory); remove() it first"
            )


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` (a directory like ``images/``) if its directory part is a safe path."""
    is_dir = isinstance(prefix, str) and prefix.endswith("/")
    check_entry_path(prefix.rstrip("/") if is_dir else prefix)
    return prefix


class Ref(NamedTuple):
    """A parsed ``[[entity/]project/]name[:alias|:vN]`` reference."""

    project: str | None
    name: str
    version: int | None  # set for ':vN'
    alias: str | None  # set otherwise ('latest' by default)


def parse_ref(ref: str) -> Ref:
    """Parse ``[[entity/]project/]name[:alias|:vN]``; the alias defaults to ``latest``.

    A W&B path's entity (``entity/project/name:alias``) is checked as a name and otherwise
    ignored: a store has no entities, so the project alone says where the artifact is.
    """
    body, colon, tag = ref.partition(":")
    parts = body.split("/")
    if len(parts) > 3:
        raise InvalidInputError(
            f"invalid reference {ref[:200]!r}: use [[entity/]project/]name[:alias|:vN]"
        )
    name = parts[-1]
    project = parts[-2] if len(parts) > 1 else None
    entity = parts[-3] if len(parts) > 2 else None
    check_name(name, "artifact name")
    if project is not None:
        check_name(project, "project")
    if entity is not None:
        check_name(entity, "entity")
    if colon and not tag:
        raise InvalidInputError(f"invalid reference {ref!r}: nothing after ':'")
    tag = tag or "latest"
    if _VERSION.fullmatch(tag):
        if len(tag) > _MAX_VERSION_DIGITS + 1:  # int() itself refuses over 4,300 digits
            raise InvalidInputError(
                f"invalid reference {ref[:60]!r}...: a version number has at most "
                f"{_MAX_VERSION_DIGITS} digits"
            )
        return Ref(project or None, name, int(tag[1:]), None)
    return Ref(project or None, name, None, check_alias(tag) if tag != "latest" else tag)
