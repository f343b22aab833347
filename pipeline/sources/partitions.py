"""Split the input into partitions: whole files, or row-group ranges of large files whose
format splits by row group (Parquet's, say).

Each partition becomes one output part, so a run can process them concurrently, skip the ones
a crashed attempt finished, and keep row order (parts are numbered in input order).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipeline.config import SourceConfig
from pipeline.sources.formats import format_for
from pipeline.sources.reader import BATCH_ROWS, SourcePlan, read_batches, row_texts


@dataclass(frozen=True)
class Partition:
    index: int
    file: Path
    rows: int
    row_groups: tuple[int, ...] | None = None  # None: the whole file
    encoding: str = "utf-8"  # of a text-based file

    def read(self, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """The partition's rows as record batches of at most about `batch_rows` (some formats
        hand out blocks as parsed)."""
        yield from read_batches(
            self.file,
            batch_rows=batch_rows,
            row_groups=list(self.row_groups) if self.row_groups else None,
            encoding=self.encoding,
        )

    def read_head(self, rows: int) -> pa.RecordBatch | None:
        """The partition's first `rows` rows (or fewer), read on their own: a Parquet reader
        decodes a whole batch before handing out any of it. None where the format reads whole
        blocks of bytes, not rows, so that a head read apart saves nothing."""
        if not format_for(self.file).reads_rows_on_demand:
            return None
        return next(self.read(batch_rows=rows), None)


def plan_partitions(plan: SourcePlan, rows_per_partition: int) -> list[Partition]:
    """Files in order; a file with more than `rows_per_partition` rows, of a format that splits
    by row group, is cut at row-group boundaries into ranges of about that many rows."""
    partitions: list[Partition] = []
    for file, rows in zip(plan.files, plan.rows):
        input_format = format_for(file)
        if not input_format.splits_by_row_group or rows <= rows_per_partition:
            partitions.append(Partition(len(partitions), file, rows, encoding=plan.encoding))
            continue
        group_rows = input_format.row_group_rows(file)
        groups, count = [], 0
        for group, group_count in enumerate(group_rows):
            groups.append(group)
            count += group_count
            if count >= rows_per_partition or group == len(group_rows) - 1:
                partitions.append(Partition(len(partitions), file, count, tuple(groups), plan.encoding))
                groups, count = [], 0
    return partitions


def first_texts(plan: SourcePlan, config: SourceConfig, count: int) -> list[str]:
    """The first `count` non-blank texts of the input, whitespace collapsed: a sample of what a run embeds."""
    texts: list[str] = []
    for partition in plan_partitions(plan, config.partition_rows):
        for batch in partition.read(batch_rows=count):
            texts += [" ".join(text.split()) for text in row_texts(batch, config) if text and text.strip()]
            if len(texts) >= count:
                return texts[:count]
    return texts
