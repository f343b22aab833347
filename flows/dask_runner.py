"""The embed flow's partitions on a Dask cluster (`embedding.task_runner: dask`).

Each worker process embeds whole partitions with its share of the rate limit, which the
coordinator the flow registers on the scheduler moves to the workers drawing budget; claims on
texts are kept there too (`pipeline.run.coordinator`, `pipeline.run.workers`). The flow keeps no
more partitions running than the cluster has threads.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack

from prefect import get_run_logger, task
from prefect.client.orchestration import get_client

from flows.api_key import read_api_key
from flows.console import hide_user_error_tracebacks
from flows.partition_window import run_partitions
from flows.task_options import IN_MEMORY
from pipeline.config import EmbeddingConfig, first_line
from pipeline.errors import ConfigError, EmbedpipeError
from pipeline.run.remote_parts import collect_parts
from pipeline.run.steps import Run
from pipeline.run.workers import (
    PartitionResult,
    RunSpec,
    absorb,
    close_run_embedders,
    embed_partition_in_worker,
    kept_by_the_flow,
    run_spec,
)


@task(**IN_MEMORY, task_run_name="embed-partition-{index}")
def embed_partition_on_worker(spec: RunSpec, index: int) -> PartitionResult:
    """One partition, in a Dask worker: reopens provider, cache and output from the spec.
    The key is read where the work runs, so it never travels as a task parameter."""
    hide_user_error_tracebacks()  # this worker's process logs the task's failure itself
    try:
        return embed_partition_in_worker(spec, index, read_api_key(spec.config.embedding))
    except EmbedpipeError as exc:  # the provider's exception it replaced cannot be unpickled: leave it behind
        error = type(exc)(str(exc))
    raise error


def dask_runner(config: EmbeddingConfig, local_workers: int):
    """A DaskTaskRunner on the scheduler at `config.dask_address`, or on a local cluster of
    `local_workers` single-threaded processes started for this run."""
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ConfigError("embedding.task_runner dask needs prefect-dask: pip install 'embedpipe[dask]'") from None
    logging.getLogger("distributed").setLevel(logging.WARNING)  # its INFO lines narrate every connection
    if config.dask_address:
        return DaskTaskRunner(address=config.dask_address)
    with get_client(sync_client=True) as client:  # workers report to this flow's server, even a temporary one
        api_url = str(client.api_url)
    cluster = {
        "n_workers": local_workers,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": ":0",  # a free port: a second run at once (8787 taken) would warn
        "env": {"PREFECT_API_URL": api_url, "DASK_DISTRIBUTED__LOGGING__DISTRIBUTED": "warning"},
    }
    return DaskTaskRunner(cluster_kwargs=cluster)


def cluster_shape(runner) -> tuple[int, int]:
    """The cluster's worker processes and threads: the rate-limit share is per process, and
    no more partitions run at once than there are threads."""
    threads = runner.client.nthreads()
    if not threads:
        raise EmbedpipeError("embedding.dask_address: the Dask cluster has no workers; start some, then run again")
    return len(threads), sum(threads.values())


def start_coordinator(client, config: EmbeddingConfig) -> None:
    """Register the coordinator of claims and rate-limit shares on the cluster's scheduler (one
    already there, from an earlier run, is kept)."""
    from pipeline.run.coordinator import Coordinator

    try:
        client.register_plugin(Coordinator())
    except (ImportError, AttributeError, TypeError) as exc:  # the scheduler cannot unpickle it
        where = config.dask_address or "the local cluster"
        raise EmbedpipeError(
            f"embedding.dask_address {where}: the scheduler cannot load embedpipe's coordinator "
            f"({first_line(exc)}); install embedpipe where the scheduler runs"
        ) from None


CLOSE_SECONDS = 10.0  # the most a run's end waits for its workers to give their shares back


def close_embedders_on_workers(client, run_key: str) -> None:
    """Close the run's embedders the workers keep between partitions: their shares go back to the
    coordinator now, not when a later run pushes them out. A worker gone by now has none left."""
    try:  # as tasks, not `client.run`: that runs on the worker's event loop, which a call to the coordinator needs
        workers = list(client.scheduler_info()["workers"])
        closing = [client.submit(close_run_embedders, run_key, workers=[w], pure=False) for w in workers]
        deadline = time.monotonic() + CLOSE_SECONDS
        for future in closing:
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:  # a worker gone meanwhile would leave its task waiting forever
                future.cancel()
    except (OSError, RuntimeError) as exc:  # the cluster is going away: nothing left to give back
        get_run_logger().debug("closing the workers' embedders failed: %s", first_line(exc))


def embed_on_dask(run: Run) -> dict[int, int]:
    """Every partition of the prepared `run`, on the cluster; each partition's row count."""
    config = run.config.embedding
    with ExitStack() as stack:
        try:
            runner = stack.enter_context(dask_runner(config, run.config.source.parallel_partitions))
            processes, threads = cluster_shape(runner)
        except OSError as exc:  # distributed's connection failures: TimeoutError, CommClosedError
            raise EmbedpipeError(
                f"embedding.dask_address {config.dask_address}: cannot reach the Dask scheduler ({first_line(exc)})"
            ) from None
        start_coordinator(runner.client, config)
        if not config.dask_address:  # a cluster of our own: its shutdown is ours to keep quiet
            from flows.dask_logging import QuietShutdown

            runner.client.register_plugin(QuietShutdown())
        spec = run_spec(run, processes, coordinated=True)
        get_run_logger().info(
            "Dask: %d worker processes, %d threads; the rate limit is shared by the processes drawing on it, "
            "through a coordinator on the scheduler",
            processes,
            threads,
        )

        def submit(index: int):
            return runner.submit(embed_partition_on_worker, parameters={"spec": spec, "index": index})

        from distributed import KilledWorker  # there whenever prefect-dask is

        parts = kept_by_the_flow(run)
        todo = [i for i in range(len(run.input.partitions)) if i not in parts]
        try:
            rows = run.input.plan.total_rows - sum(parts.values())
            done = run_partitions(lambda k: submit(todo[k]), len(todo), threads, rows, lambda r: absorb(run, r))
        except KilledWorker as exc:  # the scheduler gave up on a partition whose workers kept dying
            raise EmbedpipeError(
                f"embedding.task_runner dask: {first_line(exc)}; see those workers' logs (out of memory?), then run "
                "again: the partitions finished are kept"
            ) from None
        finally:
            close_embedders_on_workers(runner.client, spec.run_key)
    parts.update({todo[k]: rows for k, rows in done.items()})
    collect_parts(spec.remote, [run.output.chunks, run.output.rows], parts)  # workers' parts, staged in the bucket
    return parts
