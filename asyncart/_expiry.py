"""Draft expiry: the collector discards a pending distributed draft untouched for too long.

A draft is *touched* by each of its records (opened, files added or removed, metadata set):
:attr:`~asyncart._domain.fold.Draft.updated` is the time of the last one, as the log stamped
it (a server's clock over HTTP). Expiry is one ``draft.discarded`` record with reason
``"expired"``, appended at the head the decision was read at: an upsert that lands meanwhile
makes the append conflict, and the draft, touched again, is judged anew.
"""

from __future__ import annotations

from ._domain.events import DraftDiscarded
from ._domain.fold import EXPIRED, CollectionState
from ._repository import Repository

GRACE = 3600.0
"""Seconds a new blob is kept unreferenced by default (``asyncart gc --grace``); here, not in
``_gc.py``, so that the command line reads the defaults without importing a client."""
DRAFT_TTL: float | None = 7 * 86400.0
"""Seconds an open draft may stay untouched before ``gc`` discards it (None: never)."""


def expired_drafts(state: CollectionState, before: float) -> list[str]:
    """The ids of the pending distributed drafts of ``state`` last touched at ``before`` or
    earlier."""
    return [
        d.id for d in state.drafts.values() if d.distributed_id is not None and d.updated <= before
    ]


async def expire_drafts(
    repo: Repository, project: str, name: str, before: float, actor: str, dry_run: bool
) -> int:
    """Discard (dry run: count) the drafts of one collection untouched since ``before``."""

    async def step(state: CollectionState) -> int:
        doomed = expired_drafts(state, before)
        if doomed and not dry_run:
            await repo.append(state, [DraftDiscarded(d, None, EXPIRED) for d in doomed], actor)
        return len(doomed)

    count: int = await repo._retrying(project, name, step)
    return count
