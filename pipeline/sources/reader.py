"""Read input files as a stream of Arrow record batches, and check them before any spending.

How a file is read is its format's business (`pipeline.sources.formats`, chosen by suffix); this module
knows only what a format says it can do.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipeline.config import SourceConfig
from pipeline.errors import SourceError
from pipeline.sources.formats import describe_suffixes, format_for, is_supported
from pipeline.sources.unique_ids import UniqueIds
from pipeline.text.normalise import render_template, template_fields

BATCH_ROWS = 8192
# What a format's reader may raise for a bad file; an unknown encoding is a LookupError.
_READ_ERRORS = (pa.ArrowException, OSError, LookupError, UnicodeError)
_STRING_TYPES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)


@dataclass(frozen=True)
class SourcePlan:
    """The checked input: its files in reading order and their row counts."""

    files: list[Path]
    rows: list[int]
    encoding: str = "utf-8"  # of text-based files

    @property
    def total_rows(self) -> int:
        return sum(self.rows)


def resolve_files(path: str) -> list[Path]:
    """The input files `path` names (a file, a directory or a glob), sorted by name."""
    candidate = Path(path).expanduser()
    if candidate.is_dir():
        files = [p for p in candidate.iterdir() if is_supported(p)]
    elif candidate.is_file():
        files = [candidate]
    else:
        files = [Path(p) for p in glob.glob(str(candidate), recursive=True) if Path(p).is_file()]
    if not files:
        raise SourceError(f"source.path {path}: no {describe_suffixes()} files found")
    for file in files:
        format_for(file)  # an unknown suffix fails here, naming the file
    return sorted(files)


def read_batches(
    file: Path,
    columns: list[str] | None = None,
    batch_rows: int = BATCH_ROWS,
    row_groups: list[int] | None = None,
    encoding: str = "utf-8",
) -> Iterator[pa.RecordBatch]:
    """Stream `file` (or some row groups, where its format splits by them) as record batches,
    through the file's format; a read failure becomes a SourceError naming the file."""
    input_format = format_for(file)
    try:
        yield from input_format.batches(file, columns, batch_rows, row_groups, encoding)
    except _READ_ERRORS as exc:
        raise input_format.read_error(file, exc, encoding) from None


def text_columns(config: SourceConfig) -> list[str]:
    """The columns the text is built from."""
    if config.text_template:
        return template_fields(config.text_template)
    assert config.text_column is not None  # the config requires one of the two
    return [config.text_column]


def row_texts(batch: pa.RecordBatch, config: SourceConfig) -> list[str | None]:
    """The raw text of each row: one column, or the template filled from several."""
    if config.text_template is None:
        return batch.column(config.text_column).to_pylist()
    return render_template(config.text_template, {c: batch.column(c).to_pylist() for c in text_columns(config)})


def row_text_column(batch: pa.RecordBatch, config: SourceConfig) -> pa.Array | list[str | None]:
    """`row_texts`, as the Arrow column itself where the text is one column: no Python object a row."""
    if config.text_template is None:
        return batch.column(config.text_column)
    return row_texts(batch, config)


def validate_source(
    config: SourceConfig, output_column: str | None = None, unchanged: Callable[[Path], bool] = lambda f: False
) -> SourcePlan:
    """Check every file before any embedding: columns present, text columns textual, ids unique.

    `output_column`, the vector column to be added, must not already be an input column.
    Only ids are read through (they must be unique across all files), and a template is tried
    on a file's first rows. Text is read through as well where the format asks for it (a bad
    byte fails the run before any spending), not where its schema already vouched for the file
    (a Parquet footer catches truncation), so that text is read once, by the run.
    """
    files = resolve_files(config.path)
    try:
        needed = text_columns(config)
    except ValueError as exc:
        raise SourceError(f"source.text_template: {exc}") from None
    seen_ids = UniqueIds()
    rows = []
    for file in files:
        schema = _schema(file, config.encoding)
        _check_columns(file, schema, [config.id_column, *needed], config)
        if output_column in schema.names:
            raise SourceError(
                f"{file}: already has a column {output_column!r}; set output.vector_column to another name"
            )
        changed = not unchanged(file)
        if config.text_template and changed:
            _try_template(file, config)
        read_text = changed and format_for(file).read_through_to_validate
        rows.append(_check_rows(file, config, needed if read_text else [], seen_ids))
    return SourcePlan(files, rows, config.encoding)


def _schema(file: Path, encoding: str) -> pa.Schema:
    input_format = format_for(file)
    try:
        return input_format.schema(file, encoding)
    except _READ_ERRORS as exc:
        raise input_format.read_error(file, exc, encoding) from None


def _check_columns(file: Path, schema: pa.Schema, columns: list[str], config: SourceConfig) -> None:
    for column in columns:
        if column not in schema.names:
            raise SourceError(f"{file}: column {column!r} not found; columns are {', '.join(schema.names) or 'none'}")
    id_type = schema.field(config.id_column).type
    if not (pa.types.is_integer(id_type) or pa.types.is_string(id_type) or pa.types.is_large_string(id_type)):
        raise SourceError(f"{file}: id column {config.id_column!r} holds {id_type}; use a text or integer column")
    if config.text_column:
        kind = schema.field(config.text_column).type
        if not is_text_type(kind):
            raise SourceError(
                f"{file}: text column {config.text_column!r} holds {kind}, not text; set source.text_column to a "
                "text column"
            )


def is_text_type(kind: pa.DataType) -> bool:
    """Whether a column of `kind` holds text: string, large_string, string_view, a dictionary of
    one of those, or all nulls."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_null(kind) or any(is_(kind) for is_ in _STRING_TYPES)


def _try_template(file: Path, config: SourceConfig) -> None:
    """Fill the template for a few rows now, so a bad format spec fails before any spending."""
    batch = next(read_batches(file, columns=text_columns(config), batch_rows=16, encoding=config.encoding), None)
    try:
        if batch is not None:
            row_texts(batch.slice(0, 16), config)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise SourceError(f"{file}: source.text_template cannot be filled: {type(exc).__name__}: {exc}") from None


def _check_rows(file: Path, config: SourceConfig, text_columns: list[str], seen: UniqueIds) -> int:
    """Read the id and `text_columns` through (so a bad byte surfaces now, not mid-run), adding
    ids to `seen`; raise on a null or repeated id. Returns the row count."""
    rows = 0
    id_column = config.id_column
    for batch in read_batches(file, columns=list(dict.fromkeys([id_column, *text_columns])), encoding=config.encoding):
        ids = batch.column(id_column)
        if ids.null_count:
            offset = ids.is_null().to_pylist().index(True)
            raise SourceError(f"{file}: column {id_column!r} is null at row {rows + offset + 1}; every row needs an id")
        offset = seen.first_repeat(ids)
        if offset is not None:
            raise SourceError(
                f"{file}: column {id_column!r} repeats id {ids[offset].as_py()!r} at row {rows + offset + 1}; ids "
                "must be unique"
            )
        rows += batch.num_rows
    return rows
