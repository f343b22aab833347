"""A whole run as three steps — prepare, embed each file, finish — that flows call as tasks."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa

from pipeline import __version__
from pipeline.cache import VectorCache
from pipeline.concurrency import prefetch
from pipeline.config import Config
from pipeline.embed import EmbeddedText, TextEmbedder
from pipeline.errors import EmbedpipeError
from pipeline.providers import get_embedder
from pipeline.sink import ParquetSink, vector_array
from pipeline.source import SourcePlan, read_batches, row_texts, validate_source

log = logging.getLogger("embedpipe")


@dataclass
class Run:
    """Everything a run holds between its steps."""

    config: Config
    plan: SourcePlan
    texts: TextEmbedder
    rows: ParquetSink
    chunks: ParquetSink | None
    started: float

    @property
    def dimensions(self) -> int:
        return self.texts.embedder.dimensions


def prepare_run(config: Config, api_key: str | None = None) -> Run:
    """Check the input, then open the provider, the cache and the output. Spends nothing."""
    started = time.monotonic()
    plan = validate_source(config.source, output_column=config.output.vector_column)
    log.info("source checked: %d rows in %d files", plan.total_rows, len(plan.files))
    embedder = get_embedder(config.embedding, api_key)
    max_tokens = min(config.chunking.max_tokens, embedder.max_input_tokens)
    if max_tokens < config.chunking.max_tokens:
        log.warning("chunking.max_tokens lowered to %d, the input limit of %s", max_tokens, embedder.model)
    overlap = min(config.chunking.overlap_tokens, max_tokens // 2)
    cache = VectorCache(config.cache.path, embedder.cache_namespace, embedder.dimensions)
    metadata = {"embedpipe": json.dumps(output_metadata(config, embedder.dimensions, max_tokens, overlap))}
    rows = ParquetSink(config.output.path, metadata)
    chunks = ParquetSink(config.output.chunks_path, metadata) if config.output.chunks_path else None
    return Run(config, plan, TextEmbedder(embedder, cache, max_tokens, overlap), rows, chunks, started)


def output_metadata(config: Config, dimensions: int, max_tokens: int, overlap: int) -> dict:
    """What Parquet key-value metadata records: how the vectors were made. Never a secret."""
    return {
        "provider": config.embedding.provider,
        "model": config.embedding.model,
        "dimensions": dimensions,
        "chunking": {"max_tokens": max_tokens, "overlap_tokens": overlap, "encoding": "cl100k_base"},
        "pipeline_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def embed_through_batch_api(run: Run) -> None:
    """openai-batch: send every chunk the cache lacks through the Batch API, wait for the
    batches, and fill the cache; the ordinary pass then writes the output from it."""
    source = run.config.source

    def misses():
        for file in run.plan.files:
            for batch in read_batches(file):
                yield from run.texts.missing_chunks(row_texts(batch, source)).items()

    run.texts.stats.batch_api = run.texts.embedder.run_batches(misses(), run.texts.cache)


def embed_file(run: Run, index: int) -> int:
    """Embed input file number `index` into output part `index`; returns its row count.

    Reading and chunking the next record batches runs in a thread while this one waits on
    the network."""
    source = run.config.source
    prepared = ((batch, run.texts.prepare(row_texts(batch, source))) for batch in read_batches(run.plan.files[index]))
    written = 0
    for batch, rows in prefetch(prepared, depth=2):
        results = run.texts.complete(rows)
        vectors = vector_array([r.vector if r else None for r in results], run.dimensions)
        run.rows.write(index, batch.append_column(pa.field(run.config.output.vector_column, vectors.type), vectors))
        if run.chunks is not None:
            run.chunks.write(index, chunk_table(batch.column(source.id_column), results, run.dimensions))
        written += batch.num_rows
    run.rows.close_part()
    if run.chunks is not None:
        run.chunks.close_part()
    log.info("%s: %d rows embedded", run.plan.files[index], written)
    return written


def chunk_table(ids: pa.Array, results: list[EmbeddedText | None], dimensions: int) -> pa.Table:
    """One row per chunk: id, chunk_index, text, token_count, char_start, char_end, vector."""
    rows = [(i, n, chunk, vec) for i, r in enumerate(results) if r for n, (chunk, vec) in enumerate(zip(r.chunks, r.chunk_vectors))]
    return pa.table({
        "id": ids.take(pa.array([i for i, _, _, _ in rows], type=pa.int64())),
        "chunk_index": pa.array([n for _, n, _, _ in rows], type=pa.int32()),
        "text": pa.array([c.text for _, _, c, _ in rows], type=pa.string()),
        "token_count": pa.array([c.tokens for _, _, c, _ in rows], type=pa.int32()),
        "char_start": pa.array([c.start for _, _, c, _ in rows], type=pa.int64()),
        "char_end": pa.array([c.end for _, _, c, _ in rows], type=pa.int64()),
        "vector": vector_array([v for _, _, _, v in rows], dimensions),
    })


def finish_run(run: Run, rows_written: int) -> dict:
    """Check every row is accounted for, publish the output, and return the manifest."""
    stats = run.texts.stats
    if rows_written != run.plan.total_rows or stats.rows != run.plan.total_rows:
        raise EmbedpipeError(f"row count mismatch: read {run.plan.total_rows}, wrote {rows_written}; nothing published")
    stats.seconds = round(time.monotonic() - run.started, 2)
    embedder = run.texts.embedder
    stats.requests, stats.retries, stats.timed_out_tokens = embedder.requests, dict(embedder.retries), embedder.timed_out_tokens
    manifest = {
        **json.loads(run.rows.metadata["embedpipe"]),
        "sources": [{"path": str(f), "rows": n} for f, n in zip(run.plan.files, run.plan.rows)],
        "rows": run.plan.total_rows,
        "stats": stats.as_dict(),
    }
    if run.chunks is not None:
        run.chunks.publish(manifest)
    manifest = run.rows.publish(manifest)
    close_run(run)
    return manifest


def close_run(run: Run, failed: bool = False) -> None:
    """Release the cache and provider; on failure, drop what was staged."""
    if failed:
        run.rows.abort()
        if run.chunks is not None:
            run.chunks.abort()
    run.texts.cache.close()
    run.texts.embedder.close()


def run_pipeline(config: Config, api_key: str | None = None) -> dict:
    """prepare, embed every file, finish: the whole run without Prefect."""
    run = prepare_run(config, api_key)
    try:
        if run.texts.embedder.uses_batch_api:
            embed_through_batch_api(run)
        written = sum(embed_file(run, index) for index in range(len(run.plan.files)))
        return finish_run(run, written)
    except BaseException:
        close_run(run, failed=True)
        raise
