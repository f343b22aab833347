"""The `embed_dataset` flow: a few thin tasks over `pipeline.run.steps`, one task per partition."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.api_key import read_api_key
from flows.partition_window import run_partitions
from flows.signals import reclaim_sigterm
from flows.task_options import IN_MEMORY
from pipeline.config import Config
from pipeline.run.report import summary_markdown
from pipeline.run.steps import Run, close_run, embed_partition, embed_through_batch_api, finish_run, prepare_run


@task(**IN_MEMORY)
def check_and_prepare(config: Config) -> Run:
    """Validate every input file, open provider, cache and output. Spends nothing."""
    return prepare_run(config, read_api_key(config.embedding))


# No task-level retries: the provider retries each request itself, counting every attempt,
# and a fatal answer (bad key, no quota) must stop the run, not repeat it.
@task(**IN_MEMORY, task_run_name="embed-partition-{index}")
def embed_one_partition(run: Run, index: int) -> int:
    """Embed one partition (a file, or row groups of a large one) into its output part."""
    return embed_partition(run, index)


@task(**IN_MEMORY)
def run_batch_api(run: Run) -> None:
    """openai-batch: submit what the cache lacks, wait for the batches, fill the cache.
    Durable on its own: a rerun re-attaches to batches already submitted."""
    embed_through_batch_api(run)


@task(**IN_MEMORY)
def publish(run: Run, parts: dict[int, int]) -> dict:
    """Check the row count, move the parts into place, write the manifest, and publish the
    summary as a Markdown artifact."""
    manifest = finish_run(run, parts)
    create_markdown_artifact(
        summary_markdown(manifest), key="embedpipe-run-summary", description="embedpipe: what the run did"
    )
    return manifest


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
            from flows.dask_runner import embed_on_dask  # imports prefect_dask: only when asked for

            parts = embed_on_dask(run)
        else:
            window = config.source.parallel_partitions
            runner: Any  # mypy finds no overload of its submit for a sync task
            with ThreadPoolTaskRunner(max_workers=window) as runner:
                parts = run_partitions(
                    lambda i: runner.submit(embed_one_partition, parameters={"run": run, "index": i}),
                    len(run.input.partitions),
                    window,
                    run.input.plan.total_rows,
                )
        return publish(run, parts)
    except BaseException:
        close_run(run)
        raise
