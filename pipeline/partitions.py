"""Split the input into partitions: whole files, or row-group ranges of large Parquet files.

Each partition becomes one output part, so a run can process them concurrently, skip the ones
a crashed attempt finished, and keep row order (parts are numbered in input order).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.source import BATCH_ROWS, FORMATS, SourcePlan, read_batches


@dataclass(frozen=True)
class Partition:
    index: int
    file: Path
    rows: int
    row_groups: tuple[int, ...] | None = None  # None: the whole file
    encoding: str = "utf-8"  # of a CSV file

    def read(self, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """The partition's rows as record batches of `batch_rows` (a CSV file's as parsed)."""
        yield from read_batches(
            self.file,
            batch_rows=batch_rows,
            row_groups=list(self.row_groups) if self.row_groups else None,
            encoding=self.encoding,
        )

    def read_head(self, rows: int) -> pa.RecordBatch | None:
        """The partition's first `rows` rows (or fewer), read on their own: a Parquet reader
        decodes a whole batch before handing out any of it. None for a CSV file, whose reader
        hands out blocks of bytes, not of rows."""
        if FORMATS[self.file.suffix.lower()] != "parquet":
            return None
        return next(self.read(batch_rows=rows), None)


def plan_partitions(plan: SourcePlan, rows_per_partition: int) -> list[Partition]:
    """Files in order; a Parquet file with more than `rows_per_partition` rows is cut at
    row-group boundaries into ranges of about that many rows."""
    partitions: list[Partition] = []
    for file, rows in zip(plan.files, plan.rows):
        if FORMATS[file.suffix.lower()] != "parquet" or rows <= rows_per_partition:
            partitions.append(Partition(len(partitions), file, rows, encoding=plan.encoding))
            continue
        meta = pq.ParquetFile(file).metadata
        groups, count = [], 0
        for g in range(meta.num_row_groups):
            groups.append(g)
            count += meta.row_group(g).num_rows
            if count >= rows_per_partition or g == meta.num_row_groups - 1:
                partitions.append(Partition(len(partitions), file, count, tuple(groups)))
                groups, count = [], 0
    return partitions
