"""What an input format is: how to learn a file's columns and read it as record batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pyarrow as pa

from pipeline.config import first_line
from pipeline.errors import SourceError


class InputFormat:
    """One kind of input file. A subclass names its suffixes, says what it can do, and reads.

    `schema` and `batches` may raise pyarrow, OS, lookup (unknown encoding) or Unicode errors;
    the caller turns them into one line with `read_error`. A SourceError passes through as is.
    """

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]  # lower case, with the dot: (".csv",)
    # A large file may be cut into partitions at row-group boundaries (see `row_group_rows`).
    splits_by_row_group: ClassVar[bool] = False
    # A read of `batch_rows` rows decodes about that many, not a whole block of bytes, so a
    # file's first few rows are cheap to read on their own.
    reads_rows_on_demand: ClassVar[bool] = False
    # Checking a file before a run reads its text columns through: a bad byte shows only when
    # read, and would otherwise stop the run midway, after money was spent.
    read_through_to_validate: ClassVar[bool] = True

    def schema(self, file: Path, encoding: str) -> pa.Schema:
        """The columns and types `batches` will produce for `file`."""
        raise NotImplementedError

    def batches(
        self, file: Path, columns: list[str] | None, batch_rows: int, row_groups: list[int] | None, encoding: str
    ) -> Iterator[pa.RecordBatch]:
        """`file` (only `columns`, when given; only `row_groups`, for a format that splits by
        them) as record batches of at most about `batch_rows` rows, in file order."""
        raise NotImplementedError

    def row_group_rows(self, file: Path) -> list[int]:
        """The row count of each row group, in order (for a format that splits by row group)."""
        raise NotImplementedError(f"{self.name} files have no row groups")

    def read_error(self, file: Path, exc: Exception, encoding: str) -> SourceError:
        """A failure to read `file` as one line that names the file and, where known, the fix."""
        if isinstance(exc, LookupError):
            return SourceError(f"source.encoding {encoding!r}: no such encoding; use e.g. utf-8, latin-1 or cp1252")
        if isinstance(exc, UnicodeError):
            return SourceError(f"{file}: not valid {encoding} ({first_line(exc)}); set source.encoding to its encoding")
        return SourceError(f"{file}: cannot read as {self.name}: {first_line(exc)}")
