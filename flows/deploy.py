"""`embedpipe deploy CONFIG --cron "..."`: run the embed flow on a schedule against a Prefect server.

With `--pool`, the deployment is registered on that work pool and a worker runs it (the code
is taken from this project's directory on the worker's machine, or /app in the worker image).
Without, this process serves the deployment itself until stopped. The checked config is the
flow's parameter; the API key is not: the worker reads it from its environment or a Secret block.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from prefect import Flow

from flows.embed import embed_dataset
from pipeline.config import Config

PROJECT = Path(__file__).resolve().parents[1]
ENTRYPOINT = "flows/embed.py:embed_dataset"


def deploy(config: Config, cron: str, name: str, pool: str | None) -> str:
    """Register (with `pool`) or serve (without) a scheduled deployment; returns its id."""
    parameters = {"config": config.model_dump(mode="json")}
    if pool is None:
        embed_dataset.serve(name=name, cron=cron, parameters=parameters)  # blocks until stopped
        return ""
    flow = cast(Flow, embed_dataset.from_source(source=str(PROJECT), entrypoint=ENTRYPOINT))  # sync: not a coroutine
    deployment_id = flow.deploy(
        name=name,
        work_pool_name=pool,
        cron=cron,
        parameters=parameters,
        build=False,
        push=False,
        print_next_steps=False,
    )
    return str(deployment_id)
