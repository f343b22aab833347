"""What a terminal shows: a live progress display drawn by rich from `pipeline.run.progress`, and
a user's mistake as its message, without Prefect's traceback."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.errors import EmbedpipeError
from pipeline.run import progress


class _UserErrorsWithoutTraceback(logging.Filter):
    """Prefect logs a failed task with its traceback; for a user's mistake the message is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], EmbedpipeError):
            record.exc_info = None
            record.exc_text = None
        return True


_QUIET = _UserErrorsWithoutTraceback()


def hide_user_error_tracebacks() -> None:
    """Log an `EmbedpipeError` from a flow or task as its one line, in this process (the CLI's,
    or a cluster worker's). Anything else keeps its traceback: it is a bug."""
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
        if _QUIET not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(_QUIET)


@contextmanager
def live_progress(enabled: bool, interval: float = 0.5) -> Iterator[None]:
    """Show rows, tokens and requests per second, cache hits and the time left while the
    block runs; nothing when `enabled` is False (output is not a terminal)."""
    if not enabled:
        yield
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    columns = (TextColumn("embedding"), BarColumn(), TextColumn("{task.fields[detail]}"))
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("embedding", total=None, detail="checking the input")
        stop = threading.Event()

        def refresh() -> None:
            while not stop.wait(interval):
                now = progress.snapshot()
                bar.update(task, completed=now.rows, total=now.total_rows or None, detail=_detail(now))

        thread = threading.Thread(target=refresh, name="progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def _detail(now: progress.Snapshot) -> str:
    eta = "" if now.eta_seconds is None else f", {now.eta_seconds:,.0f} s left"
    return (
        f"{now.rows:,}/{now.total_rows:,} rows, {now.tokens_per_second:,.0f} tokens/s, "
        f"{now.requests_per_second:,.1f} requests/s, cache hits {now.cache_hits:,}{eta}"
    )
