"""Counting spies: how often the code under test called a function (what it controls)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


class Calls:
    """Counts the calls of ``owner.name`` while installed (those whose first argument passes
    ``which``, if given)."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        owner: object,
        name: str,
        which: Callable[[Any], bool] | None = None,
    ) -> None:
        self.count = 0
        real = getattr(owner, name)

        def spy(*args: Any, **kwargs: Any) -> Any:
            if which is None or which(args[0] if args else kwargs.get("path", ".")):
                self.count += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, spy)

    def reset(self) -> int:
        """The count so far; counting starts again from 0."""
        count, self.count = self.count, 0
        return count
