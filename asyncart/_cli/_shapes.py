"""What commands print: JSON shapes and short texts for API objects."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncart

from ._console import format_time


def artifact_data(artifact: asyncart.Artifact) -> dict[str, Any]:
    return {
        "artifact": artifact.qualified_name,
        "project": artifact.project,
        "name": artifact.collection.name if artifact.collection else artifact.name,
        "type": artifact.type,
        "version": artifact.version,
        "digest": artifact.digest,
        "aliases": artifact.aliases,
        "tags": artifact.tags,
        "files": len(artifact.manifest),
        "bytes": artifact.size,
        "created_at": artifact.created_at,
        "committed_by": artifact.committed_by,
        **(
            {"source": f"{artifact.source_project}/{artifact.source_name}"}
            if artifact.is_link
            else {}
        ),
    }


def collection_data(c: asyncart.ArtifactCollection) -> dict[str, Any]:
    return {
        "project": c.project,
        "name": c.name,
        "type": c.type,
        "versions": c.versions,
        "aliases": dict(c.aliases),
        "updated": c.updated,
    }


def entry_data(e: asyncart.LogEntry) -> dict[str, Any]:
    return {
        "stream": e.stream,
        "seq": e.seq,
        "time": e.time,
        "actor": e.actor,
        "kind": e.kind,
        "summary": e.summary,
        "data": dict(e.data),
    }


def report_data(report: asyncart.AuditReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "streams": report.streams,
        "records": report.records,
        "versions": report.versions,
        "blobs": report.blobs,
        "blobs_read": report.blobs_read,
        "problems": [
            {"stream": p.stream, "seq": p.seq, "message": p.message} for p in report.problems
        ],
        "collections": [collection_data(c) for c in report.collections],
    }


def run_data(run: asyncart.RunInfo) -> dict[str, Any]:
    return {"id": run.id, "project": run.project, "group": run.group, "job_type": run.job_type}


def run_text(run: asyncart.RunInfo) -> str:
    return f"run {run.id} ({run.job_type or 'no job type'})"


def other_aliases(aliases: Any) -> str:
    return ", ".join([f"{a}: v{n}" for a, n in sorted(aliases.items()) if a != "latest"]) or "-"


def as_of_text(as_of: datetime | int) -> str:
    return f"seq {as_of}" if isinstance(as_of, int) else format_time(as_of)
