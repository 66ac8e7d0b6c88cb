"""The exceptions asyncart raises.

Every error derives from :class:`AsyncartError`::

    AsyncartError
    ├── NotFoundError            an artifact, version, alias, blob or run does not exist
    ├── ConflictError            a stream moved on while we wrote to it (re-read, then retry)
    ├── IntegrityError           bytes or records do not match their digest, checksum or hash chain
    │   └── FileChangedError     a file changed between ``add_file`` and its upload
    ├── InvalidInputError        a bad name, path or argument (also a ``ValueError``)
    ├── SealedError              a committed artifact or finished draft was modified
    └── BackendUnavailableError  the store cannot be reached or opened
        └── AccessDeniedError    the server refused the token (missing, unknown, out of scope)

Warnings (``warnings.warn``) are ``AsyncartWarning``: ``add_dir`` reports the paths it
skipped with one.
"""

from __future__ import annotations


class AsyncartError(Exception):
    """The root of every error asyncart raises."""


class NotFoundError(AsyncartError):
    """Raised when an artifact, version, alias, blob or run does not exist."""


class ConflictError(AsyncartError):
    """Raised by a log append whose ``expected_seq`` is not the stream's head any more.

    Attributes:
        stream: the stream that moved.
        expected: the sequence number the caller expected to write at.
        head: the stream's actual next sequence number.
    """

    def __init__(self, stream: str, expected: int, head: int) -> None:
        super().__init__(
            f"stream {stream!r} moved: expected to append at seq {expected}, head is {head}; "
            "re-read the stream and retry"
        )
        self.stream, self.expected, self.head = stream, expected, head


class IntegrityError(AsyncartError):
    """Raised when stored bytes or records do not match their digest, checksum or hash chain."""


class FileChangedError(IntegrityError):
    """Raised when a file's bytes no longer match the digest computed by ``add_file``."""


class InvalidInputError(AsyncartError, ValueError):
    """Raised for a bad name, entry path, reference or argument, before anything is written."""


class SealedError(AsyncartError):
    """Raised when a committed artifact or an already logged draft is modified."""


class BackendUnavailableError(AsyncartError):
    """Raised when the store cannot be opened or reached."""


class AccessDeniedError(BackendUnavailableError):
    """Raised when a server refuses the request's token: none, unknown, or out of its scope."""


class AsyncartWarning(UserWarning):
    """Warned when asyncart leaves something out and goes on: the FIFOs, devices, sockets,
    symlinked directories and broken links ``add_dir`` skipped."""
