"""The `backfill` flow: one run per hive partition, a bounded number at once, one shared
rate limit, partitions already up to date skipped."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.task_runners import ThreadPoolTaskRunner

from flows.api_key import read_api_key
from flows.signals import reclaim_sigterm
from flows.task_options import IN_MEMORY
from pipeline.config import Config
from pipeline.providers import get_embedder
from pipeline.providers.base import Embedder
from pipeline.run.backfill import plan_backfill
from pipeline.run.steps import run_pipeline


@task(**IN_MEMORY, task_run_name="backfill-{value}")
def embed_hive_partition(value: str, config: Config, embedder: Embedder) -> dict:
    """One partition's whole run; its own output directory, the shared embedder."""
    return run_pipeline(config, embedder=embedder)


@flow(name="backfill", log_prints=True)
def backfill(
    config: Config, key: str = "date", start: str | None = None, end: str | None = None, concurrency: int = 2
) -> dict:
    """Embed every `key=value` partition of `config.source.path` between `start` and `end`."""
    reclaim_sigterm()
    todo, skipped = plan_backfill(config, key, start, end)
    if config.embedding.task_runner != "threads":
        get_run_logger().warning(
            "backfill runs its partitions' runs in this process, sharing one rate limit; embedding.task_runner %s "
            "applies to embedpipe run only",
            config.embedding.task_runner,
        )
    get_run_logger().info("backfill: %d partitions to run, %d up to date", len(todo), len(skipped))
    if not todo:
        return {"ran": [], "skipped": skipped, "rows": 0}
    embedder = get_embedder(config.embedding, read_api_key(config.embedding))
    try:
        runner: Any  # mypy finds no overload of its submit for a sync task
        with ThreadPoolTaskRunner(max_workers=concurrency) as runner:
            futures = {
                value: runner.submit(
                    embed_hive_partition, parameters={"value": value, "config": c, "embedder": embedder}
                )
                for value, c in todo
            }
            manifests = {value: future.result() for value, future in futures.items()}
    finally:
        embedder.close()
    return {"ran": list(manifests), "skipped": skipped, "rows": sum(m["rows"] for m in manifests.values())}
