"""Errors a user can act on. Each carries one line that says what to fix.

Anything that is not an `EmbedpipeError` is a bug in embedpipe and keeps its traceback.
"""


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
