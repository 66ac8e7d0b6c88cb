"""The exceptions asyncart raises.

Every error derives from :class:`AsyncartError`::

    AsyncartError
    ├── NotFoundError            an artifact, version, alias, blob or run does not exist
    │   ├── DeletedError         the version was deleted (by whom, when)
    │   └── MissingPathError     ``remove`` matched no path (also a ``FileNotFoundError``)
    │       └── MissingEntryError ``get_entry`` found no such file (also a ``KeyError``)
    ├── ConflictError            a stream moved on while we wrote to it (re-read, then retry)
    │   └── AlreadyFinishedError a distributed draft was committed by another finisher first
    ├── IntegrityError           bytes or records do not match their digest, checksum or hash chain
    │   ├── FileChangedError     a file changed between ``add_file`` and its upload
    │   └── VerificationError    ``verify`` found files that differ (also a ``ValueError``)
    ├── InvalidInputError        a bad name, path or argument (also a ``ValueError``)
    │   ├── HasAliasesError      a version to delete has aliases (``delete_aliases=True``)
    │   └── MissingDistributedIdError no distributed id and no group (also a ``TypeError``)
    ├── SealedError              a committed artifact or finished draft was modified
    └── BackendUnavailableError  the store cannot be reached or opened
        ├── AccessDeniedError    the server refused the token (missing, unknown, out of scope)
        └── NotDurableError      stored blobs could not be made durable (nothing was committed)

Warnings (``warnings.warn``) are ``AsyncartWarning``: ``add_dir`` reports the paths it
skipped with one.
"""

from __future__ import annotations


class AsyncartError(Exception):
    """The root of every error asyncart raises."""


class NotFoundError(AsyncartError):
    """Raised when an artifact, version, alias, blob or run does not exist."""


class DeletedError(NotFoundError):
    """Raised when a version that was deleted is resolved (``name:vN``).

    Attributes:
        actor: who deleted it (the deletion record's actor).
        time: when (seconds since the epoch).
    """

    def __init__(self, message: str, actor: str, time: float) -> None:
        super().__init__(message)
        self.actor, self.time = actor, time


class MissingPathError(NotFoundError, FileNotFoundError):
    """Raised by ``remove`` when no file or directory of the draft matches the path (and by
    ``download`` when no file starts with its ``path_prefix``).

    It is also a ``FileNotFoundError`` because W&B raises that for the same condition: code
    ported from W&B that catches it keeps working.
    """


class MissingEntryError(MissingPathError, KeyError):
    """Raised by ``Artifact.get_entry`` (and ``get_path``) when the version has no such file.

    It is also a ``KeyError`` because W&B raises that for the same condition.
    """

    __str__ = Exception.__str__  # the message as is (a KeyError would quote it)


class ConflictError(AsyncartError):
    """Raised by a log append whose ``expected_seq`` is not the stream's head any more.

    Attributes:
        stream: the stream that moved.
        expected: the sequence number the caller expected to write at.
        head: the stream's actual next sequence number.
    """

    def __init__(self, stream: str, expected: int, head: int, message: str | None = None) -> None:
        super().__init__(
            message
            or f"stream {stream!r} moved: expected to append at seq {expected}, head is {head}; "
            "re-read the stream and retry"
        )
        self.stream, self.expected, self.head = stream, expected, head


class CollectedError(ConflictError):
    """Raised by an append that references blobs checked before a garbage collection swept
    the blob store (its collection epoch moved): some of them may be gone. Nothing was
    appended; the library checks its blobs again and retries, and raises this only if
    collections keep sweeping meanwhile.
    """

    def __init__(self, stream: str, expected: int, epoch: int, current: int) -> None:
        super().__init__(
            stream,
            expected,
            expected,
            f"stream {stream!r}: a garbage collection swept the blob store (epoch {epoch} -> "
            f"{current}) since this append's blobs were checked; nothing was appended: check "
            "them again and retry",
        )
        self.epoch, self.current = epoch, current


class AlreadyFinishedError(ConflictError):
    """Raised by ``finish_artifact`` when another finisher committed the same pending draft
    while this one worked, and this one brings files or metadata that version does not hold.

    Nothing was written for this finish (no version holding only its own files). Retrying the
    same call cannot help: upsert the files to a new pending draft and finish it, or log them.

    Attributes:
        distributed_id: the distributed id both finishers finished.
        version: the version the other finisher committed (None if it closed the draft
            without naming one).
    """

    def __init__(self, stream: str, distributed_id: str, version: int | None, head: int) -> None:
        what = f"v{version}" if version is not None else "no version"
        super().__init__(
            stream,
            head,
            head,
            f"{stream}: the pending draft of distributed_id {distributed_id!r} was already "
            f"finished by another finisher (as {what}), which does not hold every file and "
            "metadata value of this finish; nothing was written for it: upsert them to a new "
            "draft and finish that, or log them as a new version",
        )
        self.distributed_id, self.version = distributed_id, version


class IntegrityError(AsyncartError):
    """Raised when stored bytes or records do not match their digest, checksum or hash chain."""


class FileChangedError(IntegrityError):
    """Raised when a file's bytes no longer match the digest computed by ``add_file``."""


class VerificationError(IntegrityError, ValueError):
    """Raised by ``Artifact.verify`` when files under the root are missing or differ from the
    version; the message names them.

    It is also a ``ValueError`` because W&B raises that for the same condition.
    """


class InvalidInputError(AsyncartError, ValueError):
    """Raised for a bad name, entry path, reference or argument, before anything is written."""


class HasAliasesError(InvalidInputError):
    """Raised by ``Artifact.delete`` for a version that has aliases (``latest`` aside) when
    ``delete_aliases`` is False; nothing was deleted."""


class MissingDistributedIdError(InvalidInputError, TypeError):
    """Raised by ``upsert_artifact``, ``finish_artifact`` and ``discard_artifact`` when no
    ``distributed_id`` is given and the run has no group to default to.

    It is also a ``TypeError`` because W&B raises that for the same condition (and, as every
    ``InvalidInputError``, a ``ValueError``).
    """


class SealedError(AsyncartError):
    """Raised when a committed artifact or an already logged draft is modified."""


class BackendUnavailableError(AsyncartError):
    """Raised when the store cannot be opened or reached."""


class AccessDeniedError(BackendUnavailableError):
    """Raised when a server refuses the request's token: none, unknown, or out of its scope."""


class NotDurableError(BackendUnavailableError):
    """Raised when the store could not make its blobs durable (a failed ``syncfs`` or
    ``fsync``): the commit that needed them appended nothing."""


class AsyncartWarning(UserWarning):
    """Warned when asyncart leaves something out and goes on: the FIFOs, devices, sockets,
    symlinked directories and broken links ``add_dir`` skipped."""
