"""Rows unchanged since the last run, found by position, keep the vectors the last run wrote.

An export rewritten every hour gets a new modification time each time, though most of its
rows are as they were. A changed partition is read side by side with the part the last run
wrote for the same file and row groups: a row whose text columns equal the old row at the
same position takes the old vector, compared and copied as whole Arrow columns. Only the
other rows are normalised, chunked and looked up. Memory stays one batch of each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import Config
from pipeline.incremental.unchanged_files import PreviousOutput
from pipeline.run.embed import PreparedRows, TextEmbedder
from pipeline.sinks.compact import VectorLayout
from pipeline.sources.partitions import Partition
from pipeline.sources.reader import BATCH_ROWS, row_text_column, text_columns


def prepared_batches(
    config: Config, texts: TextEmbedder, previous: PreviousOutput | None, partition: Partition
) -> Iterator[tuple[pa.RecordBatch, tuple | None, PreparedRows]]:
    """Each batch of `partition`; the rows whose vectors the last run's part already holds
    (a mask and those vectors, or None); and the other rows, normalised and chunked."""
    source = config.source
    # A compact column (int8, a cut, ...) is not the float32 the cache holds: its rows are
    # looked up in the cache again (found there, paid for nothing) rather than decoded.
    plain = VectorLayout.of(config.output).plain
    earlier = previous.earlier_part(partition) if previous and plain else None
    rows_before = PreviousRows.open(earlier, text_columns(source), config.output.vector_column)
    request = texts.embedder.batch_inputs
    # The run's first request is small: until it leaves, the account's banked minute sits full
    # and its refill is lost. Later partitions start with the bucket already draining.
    first = min(64 if partition.index == 0 else 1_024, request)
    for batch in _ends_apart(partition.read(), first, request, partition.rows, lambda: partition.read_head(first)):
        if rows_before is None:
            yield batch, None, texts.prepare(row_text_column(batch, source))
            continue
        same, vectors = rows_before.match(batch)
        texts.counts.reused(int(same.sum()))
        rest = _other_rows(batch, rows_before.text_columns, same) if same.any() else batch
        yield batch, (same, vectors), texts.prepare(row_text_column(rest, source))


def _other_rows(batch: pa.RecordBatch, columns: list[str], same: np.ndarray) -> pa.RecordBatch:
    """The rows of `batch` that `same` leaves out, with only the text `columns` row_texts reads."""
    texts = batch.select(columns)
    # Arrow's filter has no kernel for string_view: such a column is filtered as large_string.
    for i, field in enumerate(texts.schema):
        if pa.types.is_string_view(field.type):
            texts = texts.set_column(i, field.with_type(pa.large_string()), texts.column(i).cast(pa.large_string()))
    return texts.filter(pa.array(~same))


def _ends_apart(
    batches: Iterator[pa.RecordBatch],
    first: int,
    request: int,
    total: int,
    read_head: Callable[[], pa.RecordBatch | None] = lambda: None,
) -> Iterator[pa.RecordBatch]:
    """The batches of a partition of `total` rows, each end of it handed out on its own: the
    first batch as `_first_rows_first` cuts it, and the final request's rows (those left over
    from whole requests of `request` rows, else `request`) apart from the batch before them,
    so a run ends waiting for one request's rows to be pooled and written, not a batch's."""
    seen = 0
    for piece in _first_rows_first(batches, first, read_head):
        seen += piece.num_rows
        cut = piece.num_rows - (piece.num_rows % request or request) if seen >= total else 0
        if cut > 0:  # a whole number of requests before it: cutting sends no extra request
            yield piece.slice(0, cut)
            piece = piece.slice(cut)
        yield piece


def _first_rows_first(
    batches: Iterator[pa.RecordBatch], rows: int, read_head: Callable[[], pa.RecordBatch | None] = lambda: None
) -> Iterator[pa.RecordBatch]:
    """The first batch cut into slices of `rows` (about a request's worth), then twice, four
    times as many, and so on: the first request leaves without waiting for a whole batch to
    be normalised and chunked, and each slice is ready before the last one's budget is back.
    Where `read_head` reads the first rows on their own, the first slice does not wait for
    the whole first batch to be read either (4 ms against 10-20 for 8,192 short rows)."""
    head = read_head()
    if head is not None:
        yield head
    first = next(batches, None)
    if head is not None and first is not None:  # the head is the first batch's first rows
        first, rows = (first.slice(head.num_rows), rows * 2) if first.num_rows > head.num_rows else (None, rows)
    start = 0
    while first is not None:
        yield first.slice(start, rows)
        start, rows = start + rows, rows * 2
        if start >= first.num_rows:
            break
    yield from batches


class PreviousRows:
    """The last run's rows of one partition, handed out in step with the current batches."""

    def __init__(self, part: Path, text_columns: list[str], vector_column: str):
        self.text_columns = text_columns
        self.vector_column = vector_column
        self._batches = _batches(part, [*text_columns, vector_column])
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0

    @classmethod
    def open(cls, part: Path | None, text_columns: list[str], vector_column: str) -> PreviousRows | None:
        """None when there is no part to compare with, or it lacks a column we need."""
        if part is None:
            return None
        names = set(pq.read_schema(part).names)
        return cls(part, text_columns, vector_column) if {*text_columns, vector_column} <= names else None

    def match(self, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
        """For the next `batch.num_rows` rows: which equal the last run's row at the same
        position (text columns equal, a vector written), and those vectors (rows × dims)."""
        previous = self._take(batch.num_rows)
        same = np.zeros(batch.num_rows, dtype=bool)
        if previous.num_rows == 0:
            return same, np.zeros((batch.num_rows, 0), dtype=np.float32)
        equal = pc.is_valid(previous.column(self.vector_column))
        for name in self.text_columns:
            equal = pc.and_(equal, same_values(batch.column(name)[: previous.num_rows], previous.column(name)))
        same[: previous.num_rows] = equal.to_numpy(zero_copy_only=False)
        vectors = previous.column(self.vector_column)
        dims = vectors.type.list_size
        filled = pc.fill_null(vectors, pa.scalar([0.0] * dims, type=vectors.type))  # flatten skips nulls
        flat = filled.combine_chunks().flatten().to_numpy()
        matrix = np.zeros((batch.num_rows, dims), dtype=np.float32)
        matrix[: previous.num_rows] = flat.reshape(-1, dims)
        return same, matrix

    def _take(self, rows: int) -> pa.Table:
        while self._pending_rows < rows and (batch := next(self._batches, None)) is not None:
            self._pending.append(batch)
            self._pending_rows += batch.num_rows
        table = pa.Table.from_batches(self._pending, schema=self._pending[0].schema) if self._pending else pa.table({})
        head, rest = table.slice(0, rows), table.slice(rows)
        self._pending = rest.to_batches()
        self._pending_rows = rest.num_rows
        return head


def _batches(part: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    yield from pq.ParquetFile(part).iter_batches(batch_size=BATCH_ROWS, columns=columns)


def same_values(current: pa.ChunkedArray | pa.Array, previous: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Row by row: equal, or both null; False when the types cannot be compared."""
    try:
        equal = pc.equal(current, previous.cast(current.type))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array(np.zeros(len(current), dtype=bool))
    both_null = pc.and_(pc.is_null(current), pc.is_null(previous))
    return pc.or_(pc.fill_null(equal, False), both_null)
