import pytest

from asyncart import InvalidInputError
from asyncart._names import check_alias, check_entry_path, check_name, parse_ref

HOSTILE = [
    "",
    "../etc/passwd",
    "a/../../b",
    "/abs/path",
    "a\x00b",
    "a\\b",
    "a//b",
    "a/",
    "./a",
    "a/./b",
    "..",
]


@pytest.mark.parametrize("path", HOSTILE)
def test_hostile_entry_paths_are_rejected(path):
    with pytest.raises(InvalidInputError, match="invalid entry path"):
        check_entry_path(path)


@pytest.mark.parametrize("path", ["a", "a/b/c.txt", "with space/ü.png", "..hidden", "a..b"])
def test_safe_entry_paths_pass(path):
    assert check_entry_path(path) == path


@pytest.mark.parametrize("name", ["", "a/b", "-x", "a b", "x" * 129, "a:b"])
def test_bad_names(name):
    with pytest.raises(InvalidInputError):
        check_name(name)


def test_version_like_alias_is_reserved():
    with pytest.raises(InvalidInputError, match="reserved"):
        check_alias("v3")
    assert check_alias("best") == "best"


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("ds", (None, "ds", None, "latest")),
        ("ds:v3", (None, "ds", 3, None)),
        ("demo/ds:best", ("demo", "ds", None, "best")),
        ("demo/ds:v0", ("demo", "ds", 0, None)),
    ],
)
def test_parse_ref(ref, expected):
    assert tuple(parse_ref(ref)) == expected


@pytest.mark.parametrize("ref", ["", "a/b/c/d", "/b/c", "ds:v01", "ds:", "/ds"])
def test_bad_refs(ref):
    with pytest.raises(InvalidInputError):
        parse_ref(ref)
