"""Partitions run as tasks, a window of them at once, with a progress artifact of rows written."""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice
from typing import Any

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture, as_completed


def run_partitions(
    submit: Callable[[int], PrefectFuture],
    count: int,
    window: int,
    total_rows: int,
    rows_of: Callable[[Any], int] = lambda rows: rows,
) -> dict[int, int]:
    """Each partition's row count. `submit(i)` starts partition `i` and returns its future; no
    more than `window` run at once. `rows_of` turns a task's result into its row count. A
    progress artifact follows the rows written."""
    progress = create_progress_artifact(
        0.0, key="embedpipe-progress", description=f"embedpipe: rows written of {total_rows:,}"
    )
    parts: dict[int, int] = {}
    todo = iter(range(count))
    running: dict[PrefectFuture, int] = {}  # future -> its partition
    while True:
        running.update({submit(i): i for i in islice(todo, window - len(running))})
        if not running:
            return parts
        finished = next(as_completed(list(running)))
        parts[running.pop(finished)] = rows_of(finished.result())
        done = sum(parts.values())
        update_progress_artifact(
            progress,  # type: ignore[arg-type]  # a UUID in a sync flow; the coroutine is for async ones
            100.0 * done / max(total_rows, 1),
            description=f"embedpipe: {done:,} of {total_rows:,} rows written",
        )
