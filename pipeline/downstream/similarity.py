"""Nearest rows by cosine similarity, over an output embedpipe wrote.

Vectors are L2-normalised, so cosine similarity is a dot product. Exact search multiplies
blocks of queries by blocks of rows and keeps a running top k, so memory is two blocks, not
rows × rows. Beyond `EXACT_LIMIT` rows an HNSW index (usearch) answers instead; its recall
against exact search is measured in the tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipeline.config import EmbeddingConfig
from pipeline.errors import EmbedpipeError
from pipeline.providers import get_embedder, provider_class
from pipeline.remote import filesystem, is_remote
from pipeline.run.embed import chunk_rows, pool_chunks
from pipeline.sinks.parquet import MANIFEST
from pipeline.sinks.vector_dtypes import column_codes, encoding, file_encodings
from pipeline.text.chunking import token_counts
from pipeline.unit_vectors import l2_normalise

EXACT_LIMIT = 1_000_000  # rows; above this `auto` builds an approximate index


@dataclass(frozen=True)
class Embedded:
    """An output's rows that have a vector: their ids and texts, and the vectors as one matrix."""

    ids: pa.Array
    texts: pa.Array | None
    vectors: np.ndarray  # unit float32, decoded from whatever dtype the column is stored in
    settings: dict  # the embedpipe metadata: provider, model, dimensions, chunking, source columns
    codes: np.ndarray | None = None  # a binary column's packed bits, searched by Hamming distance
    encoding: dict = field(default_factory=lambda: {"dtype": "float32"})  # the column's, as its files record it


def read_output(output: str | Path, column: str | None = None) -> Embedded:
    """Load an output directory's (or object-store prefix's) ids, texts and non-null vectors of
    `column` (default: the run's vector column), decoded to float32; a clear error if it is not one."""
    fs, path = filesystem(str(output)) if is_remote(str(output)) else (None, str(output))
    try:
        settings = json.loads(fs.cat_file(f"{path}/{MANIFEST}") if fs else (Path(path) / MANIFEST).read_bytes())
    except (OSError, ValueError):
        raise EmbedpipeError(
            f"{output}: no {MANIFEST} here; point at an output.path that embedpipe run has written"
        ) from None
    columns = settings.get("columns") or {}
    id_column, text_column = columns.get("id", "id"), columns.get("text")
    vector_column = column or columns.get("vector", "embedding")
    dataset = ds.dataset(path, format="parquet", filesystem=fs)
    if vector_column not in dataset.schema.names:
        raise EmbedpipeError(f"{output}: no vector column {vector_column!r}")
    wanted = list(dict.fromkeys(c for c in (id_column, text_column, vector_column) if c and c in dataset.schema.names))
    pieces = [_decoded(fragment, wanted, vector_column) for fragment in dataset.get_fragments()]
    if not pieces:
        raise EmbedpipeError(f"{output}: no rows with a vector here")
    table = pa.concat_tables([piece[0] for piece in pieces])
    recorded = pieces[0][3]
    codes = np.concatenate([piece[1] for piece in pieces]) if recorded["dtype"] == "binary" else None
    vectors = np.concatenate([piece[2] for piece in pieces])
    texts = table[text_column].combine_chunks() if text_column in table.column_names else None
    made = column_settings(settings, vector_column)
    return Embedded(table[id_column].combine_chunks(), texts, vectors, made, codes, recorded)


def column_settings(settings: dict, column: str) -> dict:
    """The output's settings as `column`'s vectors were made: provider, model, the model's
    dimensions and chunking from the manifest's record of that column (an output may hold a
    column per model); `vector_column` names it."""
    record = settings.get("vectors", {}).get(column, {})
    made = {key: record[key] for key in ("provider", "model", "chunking") if key in record}
    if "model_dimensions" in record or "dimensions" in record:
        made["dimensions"] = record.get("model_dimensions", record.get("dimensions"))
    return {**settings, **made, "vector_column": column}


def check_query_model(embedding: EmbeddingConfig, embedded: Embedded) -> None:
    """Refuse to search a column with a query another model would embed."""
    model, column = embedded.settings["model"], embedded.settings.get("vector_column")
    if embedding.model != model:
        raise EmbedpipeError(
            f"column {column!r} holds {model} vectors, but the config embeds queries with {embedding.model}; "
            "a query must come from the column's model: pick the column with --column, or a config for that model"
        )


def _decoded(fragment: ds.Fragment, columns: list[str], vector_column: str) -> tuple:
    """One file's rows with a vector, their stored values, those decoded to unit float32 as the
    file's metadata says, and that record (dtype and parameters)."""
    table = fragment.to_table(columns=columns)
    table = table.filter(pc.is_valid(table[vector_column]))
    recorded = file_encodings(fragment.physical_schema.metadata).get(vector_column, {"dtype": "float32"})
    codes = column_codes(table[vector_column])
    vectors = encoding(recorded["dtype"]).decode(codes, recorded)
    return table, codes, np.ascontiguousarray(vectors, dtype=np.float32), recorded


def search(embedded: Embedded, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` rows nearest each float32 query, as the column is stored: a cut column is searched
    with the queries cut alike, a binary one by Hamming distance."""
    width = embedded.vectors.shape[1]
    if queries.shape[1] > width:  # the column keeps the model's first dimensions (Matryoshka)
        queries = l2_normalise(queries[:, :width])
    if embedded.codes is not None:
        return encoding(embedded.encoding["dtype"]).search_codes(queries, embedded.codes, embedded.encoding, k)
    return nearest(queries, embedded.vectors, k)


def exact_top_k(
    queries: np.ndarray, vectors: np.ndarray, k: int, skip_self: bool = False, block: int = 4_096
) -> tuple[np.ndarray, np.ndarray]:
    """For each query, the indices and scores of its `k` nearest vectors, best first.
    With `skip_self`, query i is vectors[i] and is not its own neighbour."""
    k = min(k, len(vectors) - (1 if skip_self else 0))
    indices = np.empty((len(queries), k), dtype=np.int64)
    scores = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), block):
        sims = queries[start : start + block] @ vectors.T
        if skip_self:
            rows = np.arange(len(sims))
            sims[rows, start + rows] = -np.inf
        top = (
            np.argpartition(-sims, k - 1, axis=1)[:, :k]
            if k < sims.shape[1]
            else np.tile(np.arange(sims.shape[1]), (len(sims), 1))
        )
        top_scores = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        indices[start : start + block] = np.take_along_axis(top, order, axis=1)
        scores[start : start + block] = np.take_along_axis(top_scores, order, axis=1)
    return indices, scores


def approximate_top_k(
    queries: np.ndarray, vectors: np.ndarray, k: int, skip_self: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """`exact_top_k`'s answer from an HNSW index (usearch, cosine metric)."""
    from usearch.index import Index

    index = Index(
        ndim=vectors.shape[1], metric="ip", dtype="f32", connectivity=32, expansion_add=128, expansion_search=128
    )
    index.add(np.arange(len(vectors)), vectors)
    extra = 1 if skip_self else 0
    found = index.search(queries, min(k + extra, len(vectors)))
    keys, distances = np.asarray(found.keys, dtype=np.int64), np.asarray(found.distances, dtype=np.float32)
    sims = 1.0 - distances  # usearch's "ip" distance is 1 - dot product
    if skip_self:
        own = keys == np.arange(len(queries))[:, None]
        keep = ~own
        keep[keep.sum(axis=1) > k, -1] = False  # self was not among the results: drop the last
        keys = keys[keep].reshape(len(queries), -1)[:, :k]
        sims = sims[keep].reshape(len(queries), -1)[:, :k]
    return keys[:, :k], sims[:, :k]


def nearest(
    queries: np.ndarray, vectors: np.ndarray, k: int, method: str = "auto", skip_self: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Exact up to `EXACT_LIMIT` rows with `method="auto"`, else approximate."""
    if method not in ("auto", "exact", "approximate"):
        raise EmbedpipeError(f"method {method!r}: use auto, exact or approximate")
    if method == "approximate" or (method == "auto" and len(vectors) > EXACT_LIMIT):
        return approximate_top_k(queries, vectors, k, skip_self)
    return exact_top_k(queries, vectors, k, skip_self)


def neighbours_table(embedded: Embedded, k: int, method: str = "auto") -> pa.Table:
    """Every row with a vector, its `k` nearest other rows (ids) and their scores, best first."""
    indices, scores = nearest(embedded.vectors, embedded.vectors, k, method, skip_self=True)
    width = indices.shape[1]
    offsets = pa.array(np.arange(0, indices.size + 1, width, dtype=np.int32))
    return pa.table(
        {
            "id": embedded.ids,
            "neighbour_ids": pa.ListArray.from_arrays(offsets, embedded.ids.take(pa.array(indices.ravel()))),
            "scores": pa.ListArray.from_arrays(offsets, pa.array(scores.ravel())),
        }
    )


def embed_query(text: str, settings: dict, embedding: EmbeddingConfig, api_key: str | None) -> np.ndarray:
    """The query's vector, made as the output's rows were: same provider, model, dimensions and
    chunking (a long query is chunked and pooled). `embedding` supplies endpoint and key settings."""
    made_by = provider_class(settings["provider"])
    provider = made_by.query_provider or made_by.provider
    model, dimensions = settings["model"], settings["dimensions"]
    # ada-002 refuses the parameter: sent only where the model's own size differs
    native = not made_by.accepts_dimensions or made_by.native_dimensions(model) == dimensions
    made_with = {key: settings[key] for key in ("backend",) if key in settings}  # a local model's backend
    config = embedding.model_copy(
        update={"provider": provider, "model": model, "dimensions": None if native else dimensions, **made_with}
    )
    rows = chunk_rows([text], settings["chunking"]["max_tokens"], settings["chunking"]["overlap_tokens"])
    chunks = rows.chunks_of(rows.texts[0]) if rows.texts else []
    if not chunks:
        raise EmbedpipeError("the query is empty after normalising; give some text")
    embedder = get_embedder(config, api_key)
    texts = [c.text for c in chunks]
    try:
        vectors = embedder.embed(texts, token_counts(chunks))
    finally:
        embedder.close()
    if embedder.dimensions != settings["dimensions"]:
        raise EmbedpipeError(
            f"the query came back with {embedder.dimensions} dimensions, the output has {settings['dimensions']}"
        )
    return pool_chunks(chunks, dict(zip(texts, vectors)))
