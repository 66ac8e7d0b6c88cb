"""Lifecycle rules: versions' ``ttl`` and collections' retention rules, and their application.

Both only ever delete versions, through :meth:`Repository.delete` (one ``version.deleted``
record whose ``reason`` names the rule), as :data:`ACTOR`; the blobs go at the next
:func:`asyncart.gc`, which applies these rules first. Deciding is pure (:func:`plan`, given a
folded collection and a time), so it is tested without waiting for anything to age.

- **ttl**: a live version whose commit time plus its ttl has passed is deleted, aliases and
  all (as W&B deletes expired versions): a ttl is an explicit wish, an alias is not a reason to
  keep data past it. ``latest`` moves to the newest version left.
- **retention**: a collection's rule (a ``retention.set`` record in its stream) deletes every
  live version that is none of the newest ``keep_last``, holds no alias (``latest`` among them:
  the newest version stays) unless ``keep_aliased`` is off, and is older than ``older_than``.
  A rule for a project is set on each of its collections (those it has when it is set).
"""

from __future__ import annotations

import math
import os
import time
from datetime import datetime, timedelta

import msgspec

from ._backends.base import Store
from ._domain.events import RetentionSet
from ._domain.fold import CollectionState, Version
from ._errors import DeletedError, HasAliasesError, InvalidInputError, NotFoundError
from ._names import check_name
from ._repository import Repository
from ._store import load_backend, open_store, prepare_store

ACTOR = "user:asyncart-gc"
"""Who a rule's deletions are recorded as (over HTTP, ``apply_retention``'s server appends the
id of the token that asked, as for every append; ``gc`` there runs on the server itself)."""
TTL_REASON = "ttl expired"


class RetentionRule(msgspec.Struct, frozen=True, kw_only=True):
    """A collection's retention rule (see :func:`set_retention`)."""

    keep_last: int | None = None
    older_than: timedelta | None = None
    keep_aliased: bool = True

    def __str__(self) -> str:
        parts = [] if self.keep_last is None else [f"keep last {self.keep_last}"]
        if self.older_than is not None:
            parts.append(f"older than {duration_text(self.older_than.total_seconds())}")
        return ", ".join([*parts, "keep aliased" if self.keep_aliased else "aliased too"])


class RuleDeletion(msgspec.Struct, frozen=True):
    """A version a rule deleted (or, in a dry run, would delete), and why."""

    project: str
    name: str
    version: int
    reason: str
    aliases: list[str] = []  # besides latest, deleted with it


class RetentionReport(msgspec.Struct, kw_only=True):
    """What :func:`apply_retention` deleted (with ``dry_run``: would delete)."""

    dry_run: bool
    collections: int = 0
    versions_expired: int = 0  # by their ttl
    versions_retention: int = 0  # by a retention rule
    deleted: list[RuleDeletion] = []


def check_ttl(ttl: object) -> float | None:
    """``ttl`` (a positive :class:`~datetime.timedelta`, or None) in seconds.

    Raises:
        InvalidInputError: anything else.
    """
    if ttl is None:
        return None
    if not isinstance(ttl, timedelta):
        raise InvalidInputError(
            f"ttl must be a datetime.timedelta or None, not {type(ttl).__name__}"
        )
    if ttl <= timedelta(0):
        raise InvalidInputError(f"ttl must be positive, not {ttl}")
    return ttl.total_seconds()


def _rule_event(keep_last: object, older_than: object, keep_aliased: object) -> RetentionSet:
    if keep_last is not None and (
        not isinstance(keep_last, int) or isinstance(keep_last, bool) or keep_last < 1
    ):
        raise InvalidInputError(f"keep_last must be an int of 1 or more, not {keep_last!r}")
    if older_than is not None and not isinstance(older_than, timedelta):
        raise InvalidInputError(
            f"older_than must be a datetime.timedelta or None, not {type(older_than).__name__}"
        )
    if isinstance(older_than, timedelta) and older_than <= timedelta(0):
        raise InvalidInputError(f"older_than must be positive, not {older_than}")
    if not isinstance(keep_aliased, bool):
        raise InvalidInputError(f"keep_aliased must be a bool, not {keep_aliased!r}")
    seconds = None if older_than is None else older_than.total_seconds()
    return RetentionSet(keep_last, seconds, keep_aliased)


def check_seconds(seconds: float | None, what: str) -> None:
    """A recorded duration is None or positive seconds (as a server checks them).

    Raises:
        InvalidInputError: it is not.
    """
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise InvalidInputError(f"{what} must be positive seconds, not {seconds}")


def check_rule(body: RetentionSet) -> None:
    """The values of a ``retention.set`` record are sensible (as a server checks them).

    Raises:
        InvalidInputError: they are not.
    """
    check_seconds(body.older_than, "older_than")
    _rule_event(body.keep_last, None, body.keep_aliased)


def rule_of(body: RetentionSet | None) -> RetentionRule | None:
    """The rule a record sets (None: it clears it)."""
    if body is None or (body.keep_last is None and body.older_than is None):
        return None
    older = None if body.older_than is None else timedelta(seconds=body.older_than)
    return RetentionRule(keep_last=body.keep_last, older_than=older, keep_aliased=body.keep_aliased)


def plan(state: CollectionState, now: float) -> list[tuple[Version, str]]:
    """The live versions of ``state`` its rules delete at ``now``, oldest first, with the
    reason (pure). RuleDeletion versions go first; the retention rule judges those left."""
    live = [v for v in state.versions if v.deleted is None]
    expired = {v.number for v in live if v.ttl is not None and v.time + v.ttl <= now}
    doomed = [(v, TTL_REASON) for v in live if v.number in expired]
    rule = state.retention
    left = [v for v in live if v.number not in expired]
    if rule is None or not left:
        return doomed
    kept = {v.number for v in left[-rule.keep_last :]} if rule.keep_last is not None else set()
    if rule.keep_aliased:  # the newest of those left is (or becomes) latest
        kept |= {v.number for v in left if v is left[-1] or _aliased(v)}
    reason = f"retention: {rule_of(rule)}"
    for version in left:
        if version.number in kept:
            continue
        if rule.older_than is not None and version.time > now - rule.older_than:
            continue
        doomed.append((version, reason))
    return sorted(doomed, key=lambda d: d[0].number)


def _aliased(version: Version) -> bool:
    return bool(version.aliases - {"latest"})


async def expire_collection(
    repo: Repository, project: str, name: str, now: float, dry_run: bool
) -> list[RuleDeletion]:
    """Delete (unless ``dry_run``) what :func:`plan` says of a collection; what went.

    A version deleted meanwhile by someone else is skipped, and so is one that gained an alias
    meanwhile when the rule keeps aliased versions (its deletion is refused).
    """
    state = await repo.collection(project, name)
    gone = []
    for version, reason in plan(state, now):
        aliases = sorted(version.aliases - {"latest"})
        anyway = reason == TTL_REASON or not (state.retention and state.retention.keep_aliased)
        if not dry_run:
            try:
                await repo.delete(project, name, version.number, anyway, ACTOR, reason=reason)
            except (DeletedError, HasAliasesError):
                continue
        gone.append(RuleDeletion(project, name, version.number, reason, aliases))
    return gone


def split_target(target: str) -> tuple[str, str | None]:
    """``PROJECT`` or ``PROJECT/NAME`` -> (project, name or None), both checked."""
    project, _, name = target.partition("/")
    check_name(project, "project")
    return project, None if not name else check_name(name, "artifact name")


async def collections_of(repo: Repository, target: str | None) -> list[tuple[str, str]]:
    """(project, name) of the collections ``target`` names (None: every project's)."""
    project, name = split_target(target) if target is not None else ("", None)
    if name is not None:
        return [(project, name)]
    found = []
    for stream in await repo.store.log.streams(f"{project}/artifacts/" if project else ""):
        owner, kind, rest = stream.partition("/artifacts/")
        if kind and owner and "/" not in owner and "/" not in rest:
            found.append((owner, rest))
    return found


async def set_retention(
    target: str,
    *,
    keep_last: int | None = None,
    older_than: timedelta | None = None,
    keep_aliased: bool = True,
    store: str | os.PathLike[str] | Store | None = None,
    token: str | None = None,
) -> list[str]:
    """Set the retention rule of the collection ``PROJECT/NAME``, or of each collection of
    ``PROJECT``; return the collections set (``project/name``). It is one ``retention.set``
    record per collection, applied by :func:`apply_retention` and :func:`asyncart.gc`.

    A version then goes when it is none of the newest ``keep_last`` live versions, holds no
    alias (``latest`` counts, so the newest version stays) unless ``keep_aliased`` is False,
    and is older than ``older_than``. With neither ``keep_last`` nor ``older_than`` the rule
    is cleared.

    Example::

        await asyncart.set_retention("demo/mnist", keep_last=5, older_than=timedelta(days=30))

    Raises:
        InvalidInputError: a bad target or value.
        NotFoundError: no such collection (or the project has none).
    """
    body = _rule_event(keep_last, older_than, keep_aliased)
    await load_backend(store)
    repo = Repository(open_store(store, token))
    await prepare_store(repo.store, create=False)
    async with repo.store.held():
        targets = await collections_of(repo, target)
        for project, name in targets:
            await _set_rule(repo, project, name, body)
        if not targets:
            raise NotFoundError(f"project {target} has no artifacts to set a rule on")
        return [f"{p}/{n}" for p, n in targets]


async def _set_rule(repo: Repository, project: str, name: str, body: RetentionSet) -> None:
    async def step(state: CollectionState) -> None:
        if not state.head:
            raise NotFoundError(f"artifact {project}/{name} not found")
        await repo.append(state, [body], _user_actor())

    await repo._retrying(project, name, step)  # a racing append: re-read, set again


async def retention_rules(
    target: str | None = None,
    *,
    store: str | os.PathLike[str] | Store | None = None,
    token: str | None = None,
) -> dict[str, RetentionRule]:
    """The retention rules in force, by collection (``project/name``), of ``PROJECT/NAME``,
    ``PROJECT`` or (None) every project; collections without a rule are left out."""
    await load_backend(store)
    repo = Repository(open_store(store, token))
    await prepare_store(repo.store, create=False)
    async with repo.store.held():
        rules = {}
        for project, name in await collections_of(repo, target):
            rule = rule_of((await repo.collection(project, name)).retention)
            if rule is not None:
                rules[f"{project}/{name}"] = rule
        return rules


async def apply_retention(
    target: str | None = None,
    *,
    dry_run: bool = False,
    now: datetime | float | None = None,
    store: str | os.PathLike[str] | Store | None = None,
    token: str | None = None,
) -> RetentionReport:
    """Delete now the versions whose ttl has passed and those retention rules let go, in
    ``PROJECT/NAME``, ``PROJECT`` or (None) every project; blobs are left to
    :func:`asyncart.gc` (which applies the rules itself, then collects).

    Args:
        dry_run: delete nothing; report what would go.
        now: the time to judge ages at (a datetime or UNIX seconds; default: now), e.g. to
            see what a rule will delete next week.

    Raises:
        InvalidInputError: a bad target.
    """
    when = _seconds(now)
    await load_backend(store)
    repo = Repository(open_store(store, token))
    await prepare_store(repo.store, create=False)
    async with repo.store.held():
        report = RetentionReport(dry_run=dry_run)
        for project, name in await collections_of(repo, target):
            count(report, await expire_collection(repo, project, name, when, dry_run))
            report.collections += 1
        return report


def count(report: RetentionReport, gone: list[RuleDeletion]) -> None:
    report.deleted += gone
    expired = sum(g.reason == TTL_REASON for g in gone)
    report.versions_expired += expired
    report.versions_retention += len(gone) - expired


def _seconds(now: datetime | float | None) -> float:
    if now is None:
        return time.time()
    if isinstance(now, datetime):
        return now.timestamp()
    if isinstance(now, int | float) and not isinstance(now, bool) and math.isfinite(now):
        return float(now)
    raise InvalidInputError(f"now must be a datetime or UNIX seconds, not {now!r}")


def duration_text(seconds: float) -> str:
    """``30d``, ``2h``, ``90s``: a duration as the command line takes it."""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _user_actor() -> str:
    from ._artifact import _user_actor as actor  # the Artifact's module imports this one

    return actor()
