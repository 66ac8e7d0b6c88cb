"""``asyncart retention set|show|apply``: collections' retention rules (see ``_retention.py``)."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

import msgspec

import asyncart

from .._retention import RetentionRule, apply_retention, retention_rules, set_retention
from ._console import Console
from ._registry import command
from ._values import parse_duration, parse_time


def _retention_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["set", "show", "apply"], help="what to do")
    parser.add_argument(
        "target",
        metavar="PROJECT[/NAME]",
        nargs="?",
        help="a collection, or each collection of a project (set: required; else default: "
        "every project)",
    )
    parser.add_argument("--keep-last", type=int, metavar="N", help="set: keep the newest N")
    parser.add_argument(
        "--older-than",
        type=parse_duration,
        metavar="DURATION",
        help="set: delete only versions older than this (30d, 12h ...)",
    )
    parser.add_argument(
        "--keep-aliased",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="set: keep every version with an alias, latest among them (default: keep)",
    )
    parser.add_argument("--clear", action="store_true", help="set: remove the rule")
    parser.add_argument("--dry-run", action="store_true", help="apply: report only")
    parser.add_argument(
        "--now", type=parse_time, metavar="TIME", help="apply: judge ages as of TIME"
    )


@command(
    "retention",
    _retention_args,
    "set, show or apply retention rules (ttl and keep-last/older-than; blobs go at `gc`)",
    "asyncart retention set demo/mnist --keep-last 5 --older-than 30d",
)
async def retention(args: argparse.Namespace, console: Console) -> int:
    if args.action == "set":
        return await _set(args, console)
    if args.action == "show":
        rules = await retention_rules(args.target, store=args.store, token=args.token)
        lines = [f"{name}: {rule}" for name, rule in rules.items()]
        data = {name: _rule_data(rule) for name, rule in rules.items()}
        console.result("\n".join(lines) or "no retention rules", data)
        return 0
    report = await apply_retention(
        args.target, dry_run=args.dry_run, now=args.now, store=args.store, token=args.token
    )
    verb = "would delete" if args.dry_run else "deleted"
    lines = [f"{verb} {d.project}/{d.name}:v{d.version} ({d.reason})" for d in report.deleted]
    lines.append(
        f"{verb} {len(report.deleted)} versions ({report.versions_expired} by their ttl, "
        f"{report.versions_retention} by retention rules) in {report.collections} collections"
        + ("; `asyncart gc` reclaims their blobs" if report.deleted and not args.dry_run else "")
    )
    console.result("\n".join(lines), msgspec.to_builtins(report))
    return 0


async def _set(args: argparse.Namespace, console: Console) -> int:
    if args.target is None:
        raise asyncart.InvalidInputError("name the PROJECT or PROJECT/NAME to set a rule on")
    if not args.clear and args.keep_last is None and args.older_than is None:
        raise asyncart.InvalidInputError(
            "give --keep-last N and/or --older-than DURATION (or --clear to remove the rule)"
        )
    if args.clear and (args.keep_last is not None or args.older_than is not None):
        raise asyncart.InvalidInputError("--clear takes no --keep-last or --older-than")
    older = None if args.older_than is None else timedelta(seconds=args.older_than)
    names = await set_retention(
        args.target,
        keep_last=args.keep_last,
        older_than=older,
        keep_aliased=args.keep_aliased,
        store=args.store,
        token=args.token,
    )
    rule = (
        None
        if args.clear
        else RetentionRule(
            keep_last=args.keep_last, older_than=older, keep_aliased=args.keep_aliased
        )
    )
    what = f"the retention rule {rule}" if rule else "no retention rule"
    console.result(
        f"set {what} on {', '.join(names)}",
        {"collections": names, "rule": None if rule is None else _rule_data(rule)},
        ", ".join(names),
    )
    return 0


def _rule_data(rule: RetentionRule) -> dict[str, Any]:
    older = None if rule.older_than is None else rule.older_than.total_seconds()
    return {"keep_last": rule.keep_last, "older_than": older, "keep_aliased": rule.keep_aliased}
