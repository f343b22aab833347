from types import SimpleNamespace

from pipeline.run import progress
from pipeline.run.counts import RunStats


def test_a_snapshot_sums_the_runs_in_progress_and_counts_a_shared_embedder_once():
    shared = SimpleNamespace(requests=4)
    first, second = RunStats(rows=10, embedded_tokens=100, cache_hits=3), RunStats(rows=30, embedded_tokens=50)
    progress.track(first, shared, 100)
    progress.track(second, shared, 100)
    try:
        now = progress.snapshot()
        assert (now.rows, now.total_rows, now.embedded_tokens, now.requests, now.cache_hits) == (40, 200, 150, 4, 3)
        assert now.eta_seconds is not None and now.eta_seconds >= 0
    finally:
        progress.untrack(first)
        progress.untrack(second)
    assert progress.snapshot().rows == 0 and progress.snapshot().eta_seconds is None
