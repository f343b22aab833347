"""Input formats, one module each: a new format is one `InputFormat` subclass in a new module
here, or in a package that declares it under the entry-point group `embedpipe.formats`."""

from pipeline.sources.formats.base import InputFormat
from pipeline.sources.formats.registry import (
    ENTRY_POINT_GROUP,
    describe_suffixes,
    format_for,
    formats_by_suffix,
    is_supported,
    supported_suffixes,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "InputFormat",
    "describe_suffixes",
    "format_for",
    "formats_by_suffix",
    "is_supported",
    "supported_suffixes",
]
