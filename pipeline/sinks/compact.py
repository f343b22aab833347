"""Compact vector columns: staged float32 parts rewritten as `output.vector_dtype` at publish.

Partitions stage full float32 vectors, as the cache holds them. Once every partition is in,
the parts this run wrote are read twice: a first pass calibrates the encoding on all of the
run's vectors (int8's scale) and keeps a sample; a second rewrites each part with the vector
column cut (`output.dimensions_truncate`, re-normalised) and encoded, the encoding's
parameters in the file's own metadata. A part kept from the last run is already encoded and
keeps its own parameters. The sample measures recall@10 against float32 for the manifest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.sinks.vector_dtypes import (
    VECTORS_KEY,
    VectorEncoding,
    column_codes,
    encoded_array,
    encoding,
    file_encodings,
    filled_codes,
)
from pipeline.unit_vectors import l2_normalise

if TYPE_CHECKING:
    from pipeline.config import OutputConfig

SAMPLE_ROWS = 5_000  # rows recall@10 is measured over
QUERIES = 200  # of them, the queries
BATCH_ROWS = 8_192


@dataclass(frozen=True)
class VectorLayout:
    """How one vector column is stored: its encoding and how many dimensions of the model's it keeps."""

    column: str
    dtype: str = "float32"
    truncate: int | None = None

    @classmethod
    def of(cls, output: OutputConfig) -> VectorLayout:
        """The layout `output` configures for its vector column."""
        return cls(output.vector_column, output.vector_dtype, output.dimensions_truncate)

    @property
    def encoding(self) -> VectorEncoding:
        return encoding(self.dtype)

    @property
    def plain(self) -> bool:
        """Whether the column is stored as the model made it: nothing to convert."""
        return self.dtype == "float32" and self.truncate is None

    def cut(self, matrix: np.ndarray) -> np.ndarray:
        """The first `truncate` dimensions, re-normalised (Matryoshka); all of them otherwise."""
        return matrix if self.truncate is None else l2_normalise(matrix[:, : self.truncate])

    def dimensions(self, model_dimensions: int) -> int:
        """Dimensions stored per vector."""
        return min(self.truncate or model_dimensions, model_dimensions)


def recall_at_k(queries: np.ndarray, rows: np.ndarray, layout: VectorLayout, params: dict, k: int = 10) -> float:
    """Share of the `k` rows the stored column finds nearest each float32 query, searched as
    `similar` searches it, that are among the query's true `k` nearest in full float32. A row
    as near as the true k-th counts: equal texts have equal vectors, and ties may go either way."""
    from pipeline.downstream.similarity import exact_top_k

    k = min(k, len(rows))
    _, truth = exact_top_k(queries, rows, k)
    codes = layout.encoding.encode(layout.cut(rows), params)
    found, _ = layout.encoding.search_codes(layout.cut(queries), codes, params, k)
    similarity = np.einsum("qd,qkd->qk", queries, rows[found])
    return float(np.mean(similarity >= truth[:, -1:] - 1e-6))


def convert_parts(paths: list[Path], layout: VectorLayout, seed: int = 0) -> dict:
    """Rewrite the float32 parts among `paths` in `layout`; returns what the manifest records
    of the column: dtype, dimensions, and recall@10 against float32 with its sample size."""
    fresh = [p for p in paths if layout.column not in file_encodings(pq.read_schema(p).metadata)]
    total = sum(pq.ParquetFile(p).metadata.num_rows for p in fresh)
    params: dict | None = None
    rng, keep = np.random.default_rng(seed), min(1.0, (SAMPLE_ROWS + QUERIES) / max(total, 1))
    sample = []
    for path in fresh:
        for matrix in _vectors(path, layout.column):
            params = layout.encoding.calibrate(layout.cut(matrix), params)
            sample.append(matrix[rng.random(len(matrix)) < keep])
    if params is None:  # nothing new to convert: the kept parts say it all
        return {"dtype": layout.dtype}
    for path in fresh:
        _rewrite(path, layout, params)
    found = np.concatenate(sample)
    queries = min(QUERIES, len(found) // 5)
    recall = recall_at_k(found[:queries], found[queries:], layout, params) if queries else None
    return {"dtype": layout.dtype, "recall_at_10": recall, "recall_sample_rows": int(len(found))}


def _vectors(path: Path, column: str) -> Iterator[np.ndarray]:
    """The non-null vectors of `path`'s `column`, a batch at a time."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=[column]):
        vectors = batch.column(0)
        if vectors.null_count:
            vectors = vectors.filter(vectors.is_valid())
        if len(vectors):
            yield column_codes(vectors).astype(np.float32, copy=False)


def _rewrite(path: Path, layout: VectorLayout, params: dict) -> None:
    """`path` again with its vector column encoded, whole or not at all (a temporary name, then a rename)."""
    source = pq.ParquetFile(path)
    schema = source.schema_arrow
    index = schema.get_field_index(layout.column)
    model_dimensions = schema.field(index).type.list_size
    stored = layout.encoding.arrow_type(layout.dimensions(model_dimensions))
    recorded = {**file_encodings(schema.metadata), layout.column: {"dtype": layout.dtype, **params}}
    metadata = {**(schema.metadata or {}), VECTORS_KEY: json.dumps(recorded).encode()}
    target = schema.set(index, schema.field(index).with_type(stored)).with_metadata(metadata)
    tmp = path.with_name(f".{path.name}.compact")
    dictionary = [f.name for f in target if not pa.types.is_fixed_size_list(f.type)]
    dictionary += [f"{layout.column}.list.element"] if layout.encoding.dictionary else []  # the leaf's path
    try:
        with pq.ParquetWriter(tmp, target, use_dictionary=dictionary) as writer:
            for batch in source.iter_batches(batch_size=BATCH_ROWS):
                writer.write_batch(_encoded_batch(batch, index, layout, params, target))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _encoded_batch(
    batch: pa.RecordBatch, index: int, layout: VectorLayout, params: dict, schema: pa.Schema
) -> pa.RecordBatch:
    vectors = batch.column(index)
    present = vectors.is_valid().to_numpy(zero_copy_only=False)
    codes = layout.encoding.encode(layout.cut(filled_codes(vectors).astype(np.float32)), params)
    columns = list(batch.columns)
    columns[index] = encoded_array(codes, present, layout.encoding)
    return pa.RecordBatch.from_arrays(columns, schema=schema)
