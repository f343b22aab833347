"""Errors a user can act on. Each carries one line that says what to fix.

Anything that is not an `EmbedpipeError` is a bug in embedpipe and keeps its traceback.
"""

import errno

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` says the disk, a quota or a file size limit is full: an OSError's errno,
    SQLite's SQLITE_FULL, or pyarrow's message (its errors carry no errno)."""
    message = str(exc)
    return (
        getattr(exc, "errno", None) in _DISK_FULL
        or getattr(exc, "sqlite_errorname", None) == "SQLITE_FULL"
        or "No space left" in message
        or "Disk quota" in message
    )


class EmbedpipeError(Exception):
    """A problem the user can fix: bad config, bad input, refused credentials."""


class ConfigError(EmbedpipeError):
    """The YAML file or a `--set` override is invalid."""


class SourceError(EmbedpipeError):
    """An input file is missing, unreadable or does not have the expected columns."""


class ProviderError(EmbedpipeError):
    """The embedding provider refused the work in a way retrying cannot fix."""


class ResponseError(Exception):
    """A provider's answer failed validation (count, index, dimension, finiteness).

    Retryable; never stored. Not an `EmbedpipeError`: if it persists it is reported
    as the provider misbehaving, with the last problem seen.
    """


class CacheError(EmbedpipeError):
    """The vector cache cannot be read or written: its file is damaged, or its disk is full.

    A failed cache write stops the run: carrying on would pay again for what it could not keep.
    """
