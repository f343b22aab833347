"""Live counts of the runs in this process, for a progress display to read.

A run registers its `RunStats` while it runs; a display (the terminal's, or a Prefect
artifact) reads the sum whenever it likes. Nothing here writes to a screen.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

_lock = threading.Lock()
_runs: dict[int, tuple] = {}  # id(stats) -> (stats, embedder, total rows, started)


@dataclass(frozen=True)
class Snapshot:
    """What the runs in this process have done so far, summed."""

    rows: int
    total_rows: int
    embedded_tokens: int
    requests: int
    cache_hits: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.embedded_tokens / self.seconds if self.seconds else 0.0

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the rate so far; None before the first row."""
        if not self.rows or not self.total_rows:
            return None
        return max(0.0, self.seconds * (self.total_rows - self.rows) / self.rows)


def track(stats, embedder, total_rows: int) -> None:
    """Count a run's `stats` (a RunStats) and its embedder's requests until `untrack`."""
    with _lock:
        _runs[id(stats)] = (stats, embedder, total_rows, time.monotonic())


def untrack(stats) -> None:
    with _lock:
        _runs.pop(id(stats), None)


def snapshot() -> Snapshot:
    """The sum over the runs now tracked (a backfill's share one embedder: count it once)."""
    with _lock:
        runs = list(_runs.values())
    now = time.monotonic()
    return Snapshot(
        rows=sum(stats.rows for stats, _, _, _ in runs),
        total_rows=sum(total for _, _, total, _ in runs),
        embedded_tokens=sum(stats.embedded_tokens for stats, _, _, _ in runs),
        requests=sum({id(e): e.requests for _, e, _, _ in runs}.values()),
        cache_hits=sum(stats.cache_hits for stats, _, _, _ in runs),
        seconds=max((now - started for _, _, _, started in runs), default=0.0),
    )
