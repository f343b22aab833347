"""CSV: a header row, then rows; every column read as text, in `source.encoding`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from pipeline.config import first_line
from pipeline.errors import SourceError
from pipeline.sources.formats.base import InputFormat

_PARSE = pacsv.ParseOptions(newlines_in_values=True)


class CsvFormat(InputFormat):
    """Comma-separated values with a header row."""

    name = "csv"
    suffixes = (".csv",)

    def schema(self, file: Path, encoding: str) -> pa.Schema:
        """The header's names, each a string column (CSV has no types)."""
        return pa.schema([(name, pa.string()) for name in _header(file, encoding)])

    def batches(
        self, file: Path, columns: list[str] | None, batch_rows: int, row_groups: list[int] | None, encoding: str
    ) -> Iterator[pa.RecordBatch]:
        """The file's rows in batches as parsed (a block of bytes each, whatever `batch_rows`)."""
        # Every column stays text, so ids like "007" survive unchanged.
        types = {name: pa.string() for name in _header(file, encoding)}
        convert = pacsv.ConvertOptions(column_types=types, include_columns=columns)
        yield from pacsv.open_csv(
            file, read_options=_read_options(encoding), parse_options=_PARSE, convert_options=convert
        )

    def read_error(self, file: Path, exc: Exception, encoding: str) -> SourceError:
        """Bad UTF-8 says how to name another encoding; anything else as any format says it."""
        if "invalid UTF8" in str(exc):
            return SourceError(
                f"{file}: not valid UTF-8 ({first_line(exc)}); if the file uses another encoding, set "
                "source.encoding (e.g. latin-1)"
            )
        return super().read_error(file, exc, encoding)


def _read_options(encoding: str) -> pacsv.ReadOptions:
    return pacsv.ReadOptions(encoding=encoding)


def _header(file: Path, encoding: str) -> list[str]:
    return pacsv.open_csv(file, read_options=_read_options(encoding), parse_options=_PARSE).schema.names
