"""The `embed_dataset` flow: a few thin tasks over `pipeline.run`, one task per partition."""

from __future__ import annotations

import os
from itertools import islice

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.signals import reclaim_sigterm
from pipeline.config import Config, EmbeddingConfig
from pipeline.errors import ProviderError
from pipeline.report import summary_markdown
from pipeline.run import Run, close_run, embed_partition, embed_through_batch_api, finish_run, prepare_run

# Task results hold live clients and open files: keep them in memory, never cache or persist.
_IN_MEMORY = {"cache_policy": NO_CACHE, "persist_result": False}


def read_api_key(config: EmbeddingConfig) -> str | None:
    """The key from the Prefect Secret block if one is named, else from the environment."""
    if config.api_key_block:
        from prefect.blocks.system import Secret

        try:
            return Secret.load(config.api_key_block).get()
        except ValueError:  # Prefect's answer for a block that does not exist
            raise ProviderError(f"embedding.api_key_block {config.api_key_block!r}: no such Secret block on this Prefect server") from None
    return os.environ.get(config.api_key_env)


@task(**_IN_MEMORY)
def check_and_prepare(config: Config) -> Run:
    """Validate every input file, open provider, cache and output. Spends nothing."""
    return prepare_run(config, read_api_key(config.embedding))


# No task-level retries: the provider retries each request itself, counting every attempt,
# and a fatal answer (bad key, no quota) must stop the run, not repeat it.
@task(**_IN_MEMORY, task_run_name="embed-partition-{index}")
def embed_one_partition(run: Run, index: int) -> int:
    """Embed one partition (a file, or row groups of a large one) into its output part."""
    return embed_partition(run, index)


@task(**_IN_MEMORY)
def run_batch_api(run: Run) -> None:
    """openai-batch: submit what the cache lacks, wait for the batches, fill the cache.
    Durable on its own: a rerun re-attaches to batches already submitted."""
    embed_through_batch_api(run)


@task(**_IN_MEMORY)
def publish(run: Run, parts: dict[int, int]) -> dict:
    """Check the row count, move the parts into place, write the manifest, and publish the
    summary as a Markdown artifact."""
    manifest = finish_run(run, parts)
    create_markdown_artifact(summary_markdown(manifest), key="embedpipe-run-summary", description="embedpipe: what the run did")
    return manifest


def run_partitions(submit, count: int, window: int, total_rows: int, rows_of=lambda rows: rows) -> dict[int, int]:
    """Each partition's row count. `submit(i)` starts partition `i` and returns its future; no
    more than `window` run at once. `rows_of` turns a task's result into its row count. A
    progress artifact follows the rows written."""
    progress = create_progress_artifact(0.0, key="embedpipe-progress", description=f"embedpipe: rows written of {total_rows:,}")
    parts: dict[int, int] = {}
    todo, running = iter(range(count)), {}
    while True:
        running.update({submit(i): i for i in islice(todo, window - len(running))})
        if not running:
            return parts
        finished = next(as_completed(list(running)))
        parts[running.pop(finished)] = rows_of(finished.result())
        done = sum(parts.values())
        update_progress_artifact(progress, 100.0 * done / max(total_rows, 1), description=f"embedpipe: {done:,} of {total_rows:,} rows written")


@flow(name="embed-dataset", log_prints=True)
def embed_dataset(config: Config) -> dict:
    """Embed every row of `config.source` into `config.output`; returns the manifest.
    Partitions run as concurrent tasks, `source.parallel_partitions` at once, in this process
    or (`embedding.task_runner: dask`) on a Dask cluster."""
    reclaim_sigterm()
    run = check_and_prepare(config)
    try:
        if run.texts.embedder.uses_batch_api:
            run_batch_api(run)
        if config.embedding.task_runner == "dask":
            from flows.cluster import embed_on_dask  # it builds on this module

            parts = embed_on_dask(run)
        else:
            window = config.source.parallel_partitions
            with ThreadPoolTaskRunner(max_workers=window) as runner:
                parts = run_partitions(lambda i: runner.submit(embed_one_partition, parameters={"run": run, "index": i}), len(run.partitions), window, run.plan.total_rows)
        return publish(run, parts)
    except BaseException:
        close_run(run)
        raise
