import io
from types import SimpleNamespace

from rich.console import Console

from flows import console
from pipeline.run import progress
from pipeline.run.embed import RunStats


def test_the_progress_line_shows_rows_rates_cache_hits_and_time_left():
    now = progress.Snapshot(rows=500, total_rows=2_000, embedded_tokens=10_000, requests=20, cache_hits=7, seconds=10.0)
    assert console._detail(now) == "500/2,000 rows, 1,000 tokens/s, 2.0 requests/s, cache hits 7, 30 s left"


def test_the_live_display_draws_while_a_run_is_tracked(monkeypatch):
    screen = io.StringIO()
    monkeypatch.setattr("rich.console.Console", lambda **kw: Console(file=screen, force_terminal=True, width=150))
    stats = RunStats(rows=3)
    progress.track(stats, SimpleNamespace(requests=1), 6)
    try:
        with console.live_progress(True, interval=0.05):
            __import__("time").sleep(0.3)
    finally:
        progress.untrack(stats)
    assert "3/6 rows" in screen.getvalue()
