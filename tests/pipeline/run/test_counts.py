"""The summary's counts add up on every path that reaches a summary (issue 25):

- rows = unchanged + reused + blank + the rest;
- chunks (distinct chunk texts of the distinct texts) = cache hits + sent + in flight elsewhere;
- tokens sent = what the server's `usage` reported for the requests the run accepted;
- and an estimate's "to send" is what the run it estimated then sends.

The input repeats chunks everywhere: every long text shares its first paragraph, a remark comes
back 100 rows later (another record batch), a short text equals a chunk of a long one, and the
second file shares remarks with the first.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ProviderError
from pipeline.run import counts
from pipeline.run.counts import KINDS, ChunkTally, RunCounter, RunStats
from pipeline.run.embed import chunk_rows
from pipeline.run.estimate import estimate_config
from pipeline.run.report import summary_lines, summary_markdown
from pipeline.run.steps import run_pipeline
from pipeline.text.tokens import count_tokens
from tests.conftest import openai_config, write_parquet

SHARED = "The quarterly report covers revenue, costs and the outlook for the coming year in some detail."
MAX_TOKENS = 24  # each paragraph its own chunk


def remark(k: int) -> str:
    return f"Remark {k} is about item {k} and nothing else of note in this row."


def file_a(changed: set[int] = frozenset()) -> list[str | None]:
    """300 rows; `changed` rows get a remark of their own."""
    rows = []
    for i in range(300):
        if i % 37 == 5:
            rows.append(None if i % 2 else "   ")
        elif i % 10 == 9:
            rows.append(remark(i % 100))  # the second chunk of the long texts, alone
        else:
            rows.append(f"{SHARED}\n\n{remark(1_000 + i if i in changed else i % 100)}")
    return rows


def file_b(first: int = 60) -> list[str | None]:
    """200 rows: remarks `first`..`first` + 99, the first forty of them (by default) also in file a."""
    return [None if i % 41 == 7 else f"{SHARED}\n\n{remark(first + i % 100)}" for i in range(200)]


def write_file(folder: Path, name: str, texts: list) -> Path:
    write_parquet(folder / f"{name}.parquet", {"id": [f"{name}{i}" for i in range(len(texts))], "text": texts})
    return folder


def chunk_tokens(texts: list) -> dict[str, int]:
    """Each distinct chunk text of `texts` and its tokens, as the run should count them."""
    rows = chunk_rows(texts, MAX_TOKENS, 0)
    return {c.text: c.tokens for text in rows.texts for c in rows.chunks_of(text)}


def distinct_texts(texts: list) -> int:
    return len(chunk_rows(texts, MAX_TOKENS, 0).texts)


def blank(texts: list) -> int:
    return sum(1 for t in texts if t is None or not t.strip())


@dataclass
class Expected:
    rows: tuple[int, int, int, int]  # rows, unchanged, reused, blank
    distinct_texts: int
    chunks: dict[str, int]  # every distinct chunk met: text -> tokens
    hits: set[str]  # those the cache held when the run met them


@dataclass
class Summarised:
    manifest: dict
    tokens_served: int  # by the server while the summarised run ran: the sum of its `usage`
    expected: Expected


def config(tmp_path: Path, server, source: Path, **overrides):
    chunking = {"chunking__max_tokens": MAX_TOKENS, "chunking__overlap_tokens": 0}
    return openai_config(tmp_path, server, source, **chunking, **overrides)


def served(server) -> int:
    """Tokens the server reported in `usage` so far, through the endpoint and the Batch API."""
    return server.tokens_served + sum(count_tokens(t) * n for t, n in server.batch_api.submitted.items())


def summarised(server, run) -> tuple[dict, int]:
    before = served(server)
    manifest = run()
    return manifest, served(server) - before


def cold_expected(a: list, b: list, hits: set[str] = frozenset()) -> Expected:
    return Expected((len(a) + len(b), 0, 0, blank(a) + blank(b)), distinct_texts(a + b), chunk_tokens(a + b), set(hits))


def cold(tmp_path, server, source, **overrides) -> Summarised:
    manifest, tokens = summarised(server, lambda: run_pipeline(config(tmp_path, server, source, **overrides)))
    return Summarised(manifest, tokens, cold_expected(file_a(), file_b()))


def cached_into_a_new_output(tmp_path, server, source) -> Summarised:
    run_pipeline(config(tmp_path, server, source))
    again = config(tmp_path, server, source, output__path=str(tmp_path / "new"))
    expected = cold_expected(file_a(), file_b(), hits=set(chunk_tokens(file_a() + file_b())))
    return Summarised(*summarised(server, lambda: run_pipeline(again)), expected)


def cached_into_the_same_output(tmp_path, server, source) -> Summarised:
    run_pipeline(config(tmp_path, server, source))
    manifest, tokens = summarised(server, lambda: run_pipeline(config(tmp_path, server, source)))
    return Summarised(manifest, tokens, Expected((500, 500, 0, 0), 0, {}, set()))


def incremental(tmp_path, server, source) -> Summarised:
    run_pipeline(config(tmp_path, server, source))
    b = file_b(first=150)  # every row new; remarks 150..159 and the shared paragraph known from the old b
    write_file(source, "b", b)
    known = chunk_tokens(file_a() + file_b())
    new = chunk_tokens(b)
    expected = Expected((500, 300, 0, blank(b)), distinct_texts(b), new, {t for t in new if t in known})
    return Summarised(*summarised(server, lambda: run_pipeline(config(tmp_path, server, source))), expected)


def rewritten_input(tmp_path, server, source) -> Summarised:
    run_pipeline(config(tmp_path, server, source))
    changed = {i for i in range(300) if i % 15 == 0}
    a = file_a(changed)
    write_file(source, "a", a)
    old = file_a()
    redone = [t for i, t in enumerate(a) if i in changed or blank([old[i]])]  # blank rows have no vector to reuse
    known = chunk_tokens(old + file_b())
    new = chunk_tokens(redone)
    rows = (500, 200, 300 - len(redone), blank(redone))
    expected = Expected(rows, distinct_texts(redone), new, {t for t in new if t in known})
    return Summarised(*summarised(server, lambda: run_pipeline(config(tmp_path, server, source))), expected)


def batch_api(tmp_path, server, source) -> Summarised:
    server.batch_api.duration = 0.1
    return cold(tmp_path, server, source, embedding__provider="openai-batch", embedding__batch_poll_seconds=0.02,
                embedding__batch_max_inputs_per_file=100)


def two_partitions_at_once(tmp_path, server, source) -> Summarised:
    return cold(tmp_path, server, source, source__parallel_partitions=2, embedding__batch_size=16)


def killed_and_resumed(tmp_path, server, source) -> Summarised:
    server.quota_requests = 3  # the account runs dry mid-way through file a
    with pytest.raises(ProviderError, match="quota is used up|stopped: partition"):
        run_pipeline(config(tmp_path, server, source, embedding__batch_size=16))
    paid = set(server.calls)
    server.quota_requests = None
    path = cold(tmp_path, server, source, embedding__batch_size=16)
    path.expected.hits = paid  # every answer the first attempt had was cached
    return path


PATHS = {
    "cold": cold,
    "fully cached into a new output": cached_into_a_new_output,
    "fully cached into the same output": cached_into_the_same_output,
    "incremental: an unchanged file kept": incremental,
    "rewritten input: unchanged rows reused": rewritten_input,
    "Batch API": batch_api,
    "two partitions at once": two_partitions_at_once,
    "killed and resumed": killed_and_resumed,
}


@pytest.mark.parametrize("path", PATHS)
def test_the_summary_counts_add_up(tmp_path, fake_openai, path):
    source = write_file(write_file(tmp_path / "in", "a", file_a()), "b", file_b())
    run = PATHS[path](tmp_path, fake_openai, source)
    stats, expected = run.manifest["stats"], run.expected
    assert (stats["rows"], stats["unchanged_rows"], stats["reused_rows"], stats["null_texts"]) == expected.rows
    assert stats["rows"] - stats["unchanged_rows"] - stats["reused_rows"] - stats["null_texts"] >= 0  # the rest
    assert (stats["distinct_texts"], stats["chunks"]) == (expected.distinct_texts, len(expected.chunks))
    assert stats["chunks"] == stats["cache_hits"] + stats["embedded_chunks"] + stats["in_flight_elsewhere"]
    hits = len(expected.hits)
    assert (stats["cache_hits"], stats["embedded_chunks"]) == (hits, len(expected.chunks) - hits)
    sent_tokens = sum(tokens for text, tokens in expected.chunks.items() if text not in expected.hits)
    assert stats["embedded_tokens"] == run.tokens_served == sent_tokens
    assert max([*fake_openai.calls.values(), *fake_openai.batch_api.submitted.values()], default=1) == 1
    assert_summary_says(run.manifest, stats)


def assert_summary_says(manifest: dict, stats: dict) -> None:
    """The printed summary, the manifest on disk and the Markdown artifact show the same counts."""
    on_disk = json.loads((Path(manifest["output"]) / "_manifest.json").read_text())
    assert on_disk["stats"] == stats
    text = "\n".join(summary_lines(manifest))
    numbers = lambda pattern: [int(n.replace(",", "")) for n in re.search(pattern, text).groups()]
    assert numbers(r"distinct texts +([\d,]+) in ([\d,]+) chunks") == [stats["distinct_texts"], stats["chunks"]]
    assert numbers(r"cache hits +([\d,]+) chunks") == [stats["cache_hits"]]
    assert numbers(r"sent +([\d,]+) chunks, ([\d,]+) tokens") == [stats["embedded_chunks"], stats["embedded_tokens"]]
    assert ("in flight" in text) == bool(stats["in_flight_elsewhere"])
    markdown = summary_markdown(manifest)
    assert f"| cache hits | {stats['cache_hits']:,} chunks |" in markdown
    assert f"| sent | {stats['embedded_chunks']:,} chunks, {stats['embedded_tokens']:,} tokens" in markdown


@pytest.mark.parametrize("warm", ["cold cache", "file b cached"])
def test_the_estimate_to_send_is_what_the_run_then_sends(tmp_path, fake_openai, warm):
    source = write_file(write_file(tmp_path / "in", "a", file_a()), "b", file_b())
    if warm == "file b cached":
        run_pipeline(config(tmp_path, fake_openai, source / "b.parquet", output__path=str(tmp_path / "warm")))
    run_config = config(tmp_path, fake_openai, source)
    estimate = estimate_config(run_config, api_key=None)
    manifest, tokens = summarised(fake_openai, lambda: run_pipeline(run_config))
    stats = manifest["stats"]
    assert estimate.chunks == estimate.cache_hits + estimate.chunks_to_send
    assert (estimate.chunks, estimate.cache_hits) == (stats["chunks"], stats["cache_hits"])
    assert (estimate.chunks_to_send, estimate.tokens_to_send) == (stats["embedded_chunks"], stats["embedded_tokens"])
    assert estimate.tokens_to_send == tokens > 0
    assert (estimate.rows, estimate.distinct_texts) == (stats["rows"], stats["distinct_texts"])


@pytest.mark.parametrize("order", list(itertools.permutations(["sent", "hit", "elsewhere"])))
def test_a_chunk_reported_by_several_workers_counts_once_in_the_strongest_kind(order):
    # chunk 1: sent by one worker, found in the cache by another, awaited by a third; 2: hit and awaited; 3: awaited
    reports = {"sent": [1], "hit": [1, 2], "elsewhere": [1, 2, 3]}
    tally = ChunkTally()
    for kind in order:
        only = {k: np.array(reports[k] if k == kind else [], dtype=np.int64) for k in KINDS}
        tally.merge({"met": np.array(reports[kind], dtype=np.int64), **only})
    assert tally.counts == {"sent": 1, "hit": 1, "elsewhere": 1}


def test_run_stats_add_up_across_workers_but_not_the_runs_own_figures():
    run = RunStats(rows=10, requests=3, retries={"429": 1}, held_back={"tokens": [1, 2]}, seconds=5.0)
    worker = RunStats(rows=4, requests=2, retries={"429": 2, "timeout": 1}, rate_limited=2, seconds=9.0, cost_usd=1.0)
    run.merge(worker)
    assert (run.rows, run.requests, run.retries, run.rate_limited) == (14, 5, {"429": 3, "timeout": 1}, 2)
    assert (run.held_back, run.seconds, run.cost_usd) == ({"tokens": [1, 2]}, 5.0, None)


def test_run_stats_since_is_what_running_totals_added():
    before = RunStats(requests=3, retries={"429": 1}, timed_out_tokens=10)
    after = RunStats(requests=7, retries={"429": 1, "timeout": 2}, timed_out_tokens=30)
    added = after.since(before)
    assert (added.requests, added.retries, added.timed_out_tokens) == (4, {"429": 0, "timeout": 2}, 20)
    before.merge(added)
    assert before.as_dict() == after.as_dict()


@pytest.mark.parametrize("together", [1, counts.COUNT_TOGETHER])
def test_batches_counted_together_read_as_each_counted_when_met(together, monkeypatch):
    monkeypatch.setattr(counts, "COUNT_TOGETHER", together)
    run = RunCounter()
    run.met(3, 1, ["a", "b"], ["a", "b"], np.array([True, False]))  # a cached, b to send
    assert (run.stats.rows, run.stats.chunks, run.stats.cache_hits) == (3, 2, 1)  # read mid-run: all met so far
    run.met(2, 0, ["b", "c"], ["b", "c"], np.array([False, True]))
    assert run.were_embedded(["b"]) == [False]
    run.embedded(["b"], tokens=5)
    assert run.were_embedded(["b", "c"]) == [True, False]
    run.met(1, 0, ["c"], ["c"], np.array([True]))
    stats = run.stats
    assert (stats.distinct_texts, stats.chunks, stats.cache_hits, stats.embedded_chunks) == (3, 3, 2, 1)


@pytest.mark.parametrize("together", [1, counts.COUNT_TOGETHER])
@pytest.mark.parametrize("cached", [True, False])
def test_a_chunk_embedded_while_the_batch_that_met_it_waits_counts_once_as_sent(together, cached, monkeypatch):
    monkeypatch.setattr(counts, "COUNT_TOGETHER", together)
    run = RunCounter()
    run.met(2, 0, ["a", "b"], ["a", "b"], np.array([cached, False]))
    run.embedded(["a", "b"], tokens=4)  # counted as sent at once, the batch perhaps still waiting
    assert run.were_embedded(["a", "b"]) == [True, True]
    stats = run.stats
    assert (stats.chunks, stats.cache_hits, stats.embedded_chunks, stats.embedded_tokens) == (2, 0, 2, 4)


@pytest.mark.parametrize("together", [1, counts.COUNT_TOGETHER])
def test_a_chunk_sent_ahead_reads_as_embedded_while_the_batch_that_met_it_waits(together, monkeypatch):
    monkeypatch.setattr(counts, "COUNT_TOGETHER", together)
    run = RunCounter()
    run.sent_ahead(["a"])
    run.met(1, 0, ["a"], ["a"], np.array([True]))  # the Batch API stored it: found in the cache
    assert run.were_embedded(["a"]) == [True]  # read back from the cache, not paid for again
    assert (run.stats.cache_hits, run.stats.embedded_chunks) == (0, 1)
