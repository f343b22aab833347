"""A whole run as three steps — prepare, embed each partition, finish — that flows call as tasks."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipeline.cache.tiered import open_cache, settled_shared_counts
from pipeline.cache.vectors import VectorCache
from pipeline.concurrency import holding, in_background, map_ahead, prefetch, prompt_thread_switches
from pipeline.config import Config
from pipeline.errors import EmbedpipeError
from pipeline.incremental.unchanged_files import PreviousOutput, part_source, run_key, settings_key
from pipeline.incremental.unchanged_rows import prepared_batches
from pipeline.providers import check_truncation, get_embedder
from pipeline.providers.base import Embedder
from pipeline.remote import RemoteOutput, is_remote, localised
from pipeline.run import progress
from pipeline.run.columns import check_cut, finish_vector_columns, output_metadata
from pipeline.run.counts import RunStats
from pipeline.run.embed import RowVectors, TextEmbedder
from pipeline.run.estimate import check_budget, checked_input, estimate_run, model_price, run_cost
from pipeline.run.memory import allocate_for_a_run
from pipeline.sinks.iceberg import write_iceberg
from pipeline.sinks.parquet import ParquetSink, chunk_table, vector_array, write_delta
from pipeline.sources.partitions import Partition, first_texts, plan_partitions
from pipeline.sources.reader import SourcePlan, row_text_column
from pipeline.text.chunking import chunk_limits

log = logging.getLogger("embedpipe")
FIRST_REQUEST_WAIT = 0.1  # seconds the next rows wait for the run's first request to leave, at most


@dataclass(kw_only=True)
class RunInput:
    """What a run reads: the checked input, cut into partitions."""

    plan: SourcePlan
    partitions: list[Partition]
    sources: dict[int, dict]  # each partition's input fingerprint, taken before reading it
    previous: PreviousOutput | None  # the last run's output, for incremental runs
    source_url: str | None = None  # source.path as configured, where it is on an object store


@dataclass(kw_only=True)
class RunOutput:
    """What a run writes: its parts, staged until published."""

    rows: ParquetSink
    chunks: ParquetSink | None
    metadata: dict  # how the vectors are made, as the Parquet metadata records it
    remote_outputs: list[RemoteOutput] = field(default_factory=list)  # copied up once published
    published_at: str = ""  # output.path as configured: a local path or a URL


@dataclass(kw_only=True)
class Run:
    """Everything a run holds between its steps: what it reads, how it embeds, what it writes."""

    config: Config
    input: RunInput
    texts: TextEmbedder
    output: RunOutput
    started: float
    owns_embedder: bool = True
    elsewhere: dict[str, RunStats] = field(default_factory=dict)  # cluster workers' embedders' totals, by process
    price: dict | None = None  # `model_price`, read before anything is spent: a bad table fails first
    reading: threading.Lock = field(default_factory=threading.Lock)  # held by the partition reading its rows

    @property
    def dimensions(self) -> int:
        return self.texts.embedder.dimensions


def prepare_run(config: Config, api_key: str | None = None, embedder: Embedder | None = None) -> Run:
    """Check the input, then open the provider, the cache and the output. Spends nothing.
    A shared `embedder` (a backfill's runs share one rate limit) is used and left open."""
    started = time.monotonic()
    prompt_thread_switches()
    allocate_for_a_run()  # before the run's threads start: each would take an arena of its own
    published_at, source_url = config.output.path, config.source.path if is_remote(config.source.path) else None
    check_truncation(config.embedding, config.output.dimensions_truncate)  # before anything opens
    config, remote_outputs = localised(config)  # object-store paths become local mirrors
    for remote in remote_outputs:
        remote.check_writable()
    key = settings_key(config)
    with ExitStack() as undo:  # whatever opened is closed again if a later step fails
        owns_embedder = embedder is None
        opening = in_background(_open_embedder_and_cache, config, api_key, embedder)  # while the input is checked
        undo.callback(_close_opened, opening, owns_embedder)
        pricing = in_background(model_price, config.embedding)  # a bad table still fails before any spending
        plan, previous = checked_input(config)
        log.info("source checked: %d rows in %d files", plan.total_rows, len(plan.files))
        price = pricing.result()
        embedder, cache = opening.result()
        if embedder.needs_sample:  # a local backend chosen on what this run embeds first
            embedder.choose(first_texts(plan, config.source, embedder.sample_size))
        if cache is None:  # the model's dimensions, or its backend, known only now that the input has passed
            cache = open_cache(config.cache, embedder)
            undo.callback(cache.close)
        max_tokens, overlap = chunk_limits(config.chunking, embedder.max_input_tokens, embedder.model)
        if config.embedding.max_cost_usd is not None:  # an extra read of the input, before any spending
            check_budget(
                estimate_run(config, plan, previous, embedder, cache, max_tokens, overlap),
                config.embedding.max_cost_usd,
            )
        check_cut(config, embedder.dimensions)
        metadata = {**output_metadata(config, embedder.dimensions, max_tokens, overlap), **embedder.made_with}
        staging = run_key({"config": config.model_dump(mode="json"), "settings": key}, plan.files)
        rows = ParquetSink(config.output.path, {"embedpipe": json.dumps(metadata)}, staging)
        undo.callback(rows.close)
        chunks = (
            ParquetSink(config.output.chunks_path, {"embedpipe": json.dumps(metadata)}, staging)
            if config.output.chunks_path
            else None
        )
        undo.pop_all()  # the run owns them now
    partitions = plan_partitions(plan, config.source.partition_rows)
    sources = {p.index: part_source(p) for p in partitions}  # as read now, not as found at publish
    texts = TextEmbedder(embedder, cache, max_tokens, overlap)
    progress.track(texts.stats, embedder, plan.total_rows)
    return Run(
        config=config,
        input=RunInput(plan=plan, partitions=partitions, sources=sources, previous=previous, source_url=source_url),
        texts=texts,
        output=RunOutput(
            rows=rows,
            chunks=chunks,
            metadata={**metadata, "settings_key": key},
            remote_outputs=remote_outputs,
            published_at=published_at,
        ),
        started=started,
        owns_embedder=owns_embedder,
        price=price,
    )


def _open_embedder_and_cache(
    config: Config, api_key: str | None, shared: Embedder | None
) -> tuple[Embedder, VectorCache | None]:
    """The provider (`shared`, or a new one) and the cache of its vectors; no cache where
    the model must be asked its dimensions, a paid call that waits for the input check."""
    embedder = shared or get_embedder(config.embedding, api_key)
    try:
        known = embedder.knows_dimensions and not embedder.needs_sample
        return embedder, open_cache(config.cache, embedder) if known else None
    except BaseException:
        if shared is None:
            embedder.close()
        raise


def _close_opened(opening: Future, owns_embedder: bool) -> None:
    if opening.exception() is None:  # waits for it: nothing is left open behind a failed start
        embedder, cache = opening.result()
        if cache is not None:
            cache.close()
        if owns_embedder:
            embedder.close()


def embed_through_batch_api(run: Run) -> None:
    """openai-batch: send every chunk the cache lacks through the Batch API, wait for the
    batches, and fill the cache; the ordinary pass then writes the output from it."""
    source = run.config.source

    def misses():  # only partitions that will be embedded: not resumed, not kept unchanged
        for p in run.input.partitions:
            if run.output.rows.finished_rows(p.index) is None and not (
                run.input.previous and run.input.previous.part_for(p)
            ):
                for batch in p.read():
                    yield from run.texts.send_ahead(row_text_column(batch, source)).items()

    counts = run.texts.embedder.run_batches(misses(), run.texts.cache)
    run.texts.stats.batch_api = counts
    run.texts.stats.embedded_tokens += counts.get("tokens", 0)  # sent: the endpoint's tokens and the Batch API's


def embed_partition(run: Run, index: int) -> int:
    """Embed partition `index` into output part `index`; returns its row count. A part that
    an earlier, interrupted attempt of this same run finished is kept, not redone.

    Reading and chunking the next record batches runs in a thread while this one waits on
    the network, and the next batch's requests leave before this one's last answer."""
    source, partition = run.config.source, run.input.partitions[index]
    done = run.output.rows.finished_rows(index)
    if done is not None and (run.output.chunks is None or run.output.chunks.finished_rows(index) is not None):
        run.texts.counts.skipped(done)
        log.info("partition %d: finished by an earlier attempt, %d rows kept", index, done)
        return done
    previous = run.input.previous.part_for(partition) if run.input.previous else None
    if previous is not None:
        kept = run.output.rows.adopt(index, previous)
        run.texts.counts.skipped(kept, unchanged=True)
        log.info("partition %d (%s): unchanged since the last run, %d rows kept", index, partition.file, kept)
        return kept
    rows = run.output.rows.open_part(index, partition.rows)
    chunks = run.output.chunks.open_part(index, partition.rows) if run.output.chunks else None
    try:
        # One partition reads and prepares at a time; the next starts as this one's last rows are
        # prepared, so only its last answers overlap the next one's start. Two preparing at once
        # shared 2 cores and the interpreter: 15-20% more CPU, and a second partition's memory.
        batches = holding(run.reading, prepared_batches(run.config, run.texts, run.input.previous, partition))
        prepared = prefetch(_first_request_first(batches, run.texts.embedder), depth=2)
        embedded = map_ahead(lambda item: run.texts.complete(item[2]), prepared, ahead=2)
        # On a failure: requests stop first, then the reading and embedding threads end (not when collected)
        with closing(prepared), closing(embedded), _stop_on_failure(run.texts.embedder, index):
            for (batch, reused, _), result in embedded:
                matrix, present = _merge(reused, result, run.dimensions)
                vectors = vector_array(matrix, present)
                rows.write(batch.append_column(pa.field(run.config.output.vector_column, vectors.type), vectors))
                if chunks is not None:
                    chunks.write(chunk_table(batch.column(source.id_column), result.embedded_texts(), run.dimensions))
            if chunks is not None:
                chunks.finish()  # before the rows part: a finished rows part means both are done
            written = rows.finish()
    except BaseException:
        for part in (rows, chunks):
            if part is not None:
                part.abandon()  # no half-written file stays behind; finished parts stay for the resume
        raise
    log.info("partition %d (%s): %d rows embedded", index, partition.file, written)
    return written


def _first_request_first(batches: Iterator[tuple], embedder: Embedder) -> Iterator[tuple]:
    """`batches` (from `prepared_batches`), the second read and prepared only once the first
    request is on the wire (at most `FIRST_REQUEST_WAIT` s): the next rows cannot leave before
    its answer anyway, and preparing them meanwhile takes the interpreter from the thread
    building and sending it. No wait where the first rows need no request."""
    try:
        first = next(batches, None)
        if first is None:
            return
        yield first
        if first[2].misses:
            embedder.wait_for_first_request(FIRST_REQUEST_WAIT)
        yield from batches
    finally:
        getattr(batches, "close", lambda: None)()  # the reader is released now, not when collected


@contextmanager
def _stop_on_failure(embedder: Embedder, index: int) -> Iterator[None]:
    """A failed partition fails the run: no request of it, or of any other partition, leaves after."""
    try:
        yield
    except BaseException:
        embedder.stop(f"stopped: partition {index} failed")
        raise


def _merge(reused: tuple | None, result: RowVectors, dimensions: int) -> tuple[np.ndarray, np.ndarray]:
    """The batch's row vectors: reused rows from the last run, the others as just embedded."""
    if reused is None:
        return result.matrix, result.present
    same, vectors = reused
    matrix, present = vectors, same.copy()
    matrix[~same] = result.matrix
    present[~same] = result.present
    return matrix, present


def finish_run(run: Run, parts: dict[int, int]) -> dict:
    """Check every row is accounted for, publish the output, and return the manifest.
    `parts` maps each partition to the rows it wrote."""
    stats = run.texts.stats
    written = sum(parts.values())
    if written != run.input.plan.total_rows or stats.rows != run.input.plan.total_rows:
        raise EmbedpipeError(
            f"row count mismatch: read {run.input.plan.total_rows}, wrote {written}; nothing published"
        )
    hits, writes = settled_shared_counts(run.texts.cache)  # waits for its writes: the next host finds them
    stats.shared_hits += hits  # to cluster workers' counts, merged already
    stats.shared_writes += writes
    stats.seconds = round(time.monotonic() - run.started, 2)
    embedder = run.texts.embedder
    stats.merge(embedder.sent)
    stats.held_back = {name: [cap, server] for name, (cap, server) in embedder.held_back.items()}
    batch_tokens = stats.batch_api.get("tokens", 0)
    stats.cost_usd = run_cost(run.price, stats.embedded_tokens - batch_tokens, batch_tokens)
    manifest = {
        **run.output.metadata,
        "output": run.output.published_at or str(run.config.output.path),
        "rows": run.input.plan.total_rows,
        "stats": stats.as_dict(shared_tier=run.config.cache.shared_path is not None),
        "vectors": finish_vector_columns(
            run.config, run.output.rows.staged(parts), run.output.metadata, run.input.previous
        ),
    }
    if run.output.chunks is not None:
        run.output.chunks.publish(manifest, parts, run.input.sources)
    manifest = run.output.rows.publish(manifest, parts, run.input.sources)
    close_run(run)
    for remote in run.output.remote_outputs:
        remote.push()
    if run.config.output.delta_path:
        write_delta(run.config.output.path, run.config.output.delta_path)
    if run.config.output.iceberg:
        manifest["iceberg"] = write_iceberg(run.config.output.path, run.config.output.iceberg, manifest)
    return manifest


def close_run(run: Run) -> None:
    """Release the cache, the provider and the output. Staged parts stay: a run started again
    resumes from them."""
    run.output.rows.close()
    if run.output.chunks is not None:
        run.output.chunks.close()
    run.texts.cache.close()
    progress.untrack(run.texts.stats)
    if run.owns_embedder:
        run.texts.embedder.close()


def run_pipeline(config: Config, api_key: str | None = None, embedder: Embedder | None = None) -> dict:
    """prepare, embed every partition (`source.parallel_partitions` at once), finish: the
    whole run without Prefect."""
    run = prepare_run(config, api_key, embedder)
    try:
        if run.texts.embedder.uses_batch_api:
            embed_through_batch_api(run)
        pool = ThreadPoolExecutor(max_workers=config.source.parallel_partitions, thread_name_prefix="partition")
        try:
            futures = [pool.submit(embed_partition, run, index) for index in range(len(run.input.partitions))]
            rows = {index: future.result() for index, future in enumerate(futures)}
        finally:  # on a failure, partitions not yet started are not started
            pool.shutdown(wait=True, cancel_futures=True)
        return finish_run(run, rows)
    except BaseException:
        close_run(run)
        raise
