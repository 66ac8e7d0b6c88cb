"""Comparing two manifests: which paths were added, removed or changed (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from ._domain.manifest import Manifest, pages_apart


@dataclass(frozen=True)
class ManifestDiff:
    """What changed from one version to another; each tuple is sorted by path.

    ``changed`` holds the paths present in both whose content digest (or reference URI) differs.
    """

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def __str__(self) -> str:
        return f"{len(self.added)} added, {len(self.removed)} removed, {len(self.changed)} changed"


def diff_manifests(old: Manifest, new: Manifest) -> ManifestDiff:
    """The paths ``new`` adds to, removes from and changes in ``old``.

    Only the entries outside the pages both manifests share are compared, so the cost follows
    what changed (for a version replayed over the other) rather than the manifests' size.
    """
    before, after = pages_apart(old, new)
    return ManifestDiff(
        added=tuple(sorted(after.keys() - before.keys())),
        removed=tuple(sorted(before.keys() - after.keys())),
        changed=tuple(sorted(p for p in before.keys() & after.keys() if before[p] != after[p])),
    )
