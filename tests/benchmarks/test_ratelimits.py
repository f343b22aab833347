"""The benchmark's arithmetic and report: the lower bound and sustained rate under windows and a
halved period, corpus sizing, the verdict line and the markdown table. Nothing here is timed."""

from dataclasses import replace

import pytest

from benchmarks.ratelimits import (
    Scenario,
    corpus,
    describe,
    embedpipe_config,
    figures,
    lower_bound,
    lower_bound_fixed,
    markdown_table,
    scaled,
    sustained,
    targets,
    work_of,
)
from pipeline.text.tokens import count_tokens


def run(client, seconds, error=None, rate_limited=0, requests=100):
    return {"client": client, "seconds": seconds, "error": error, "rate_limited": rate_limited, "requests": requests}


@pytest.mark.parametrize(
    "ours, peers, sustained, unmet",
    [
        (run("embedpipe", 197.3), [run("langchain", 197.34), run("cookbook", 203.9)], 0.998, []),
        (run("embedpipe", 197.3), [run("langchain", 197.29)], 0.998, ["ahead of langchain (-0.01 s)"]),
        (run("embedpipe", 197.3), [run("langchain", 197.3)], 0.998, ["ahead of langchain (+0.00 s)"]),  # a tie is not ahead
        (run("embedpipe", 197.3), [run("langchain", 12.0, error="RateLimitError: ...")], 0.998, []),  # a peer that gave up
        (run("embedpipe", 197.3, rate_limited=1), [], 0.998, ["429s < 1% of requests (1.00%)"]),
        (run("embedpipe", 250.0), [], 0.94, ["sustained ≥ 0.95 of the limit (0.940)"]),
    ],
)
def test_the_verdict_names_each_target_not_met(ours, peers, sustained, unmet):
    line = targets(ours, peers, sustained)
    assert sorted(part.removesuffix(": NOT met") for part in line.removeprefix("targets: ").split("; ") if part.endswith("NOT met")) == sorted(unmet)


def test_a_client_that_lost_rows_has_failed_and_our_lost_rows_miss_a_target():
    peer = {**run("cookbook", 500.0), "rows_lost": 256}
    line = targets({**run("embedpipe", 197.3), "rows_lost": 3}, [peer], 0.998)
    assert "ahead of cookbook (it failed): met" in line
    assert "no row lost (3): NOT met" in line


def test_when_embedpipe_fails_it_is_ahead_of_no_one():
    line = targets(run("embedpipe", 10.0, error="RuntimeError: boom"), [run("langchain", 197.3)], 0.998)
    assert "finished (RuntimeError: boom): NOT met" in line
    assert "ahead of langchain (+187.30 s): NOT met" in line


def scenario(window=60.0, halved=None, limit=600, binding="tokens", batch=None):
    """A scenario of `limit` a minute (10 a second) on its binding budget."""
    return Scenario("s", binding, rpm=limit, tpm=limit, window=window, seconds=90, words=(2, 6), batch=batch,
                    halved=halved)


@pytest.mark.parametrize(
    "s, work, seconds",
    [
        (scenario(), 600, 0.0),  # the banked minute covers it
        (scenario(), 1_200, 60.0),
        (scenario(window=1.0), 610, 60.0),  # only 10 banked
        (scenario(window=10.0), 700, 60.0),
        (scenario(window=10.0, halved=(1 / 3, 2 / 3)), 100 + 300 + 100, 50.0),  # 30 s at 10/s, then 20 s at 5/s
        (scenario(window=10.0, halved=(1 / 3, 2 / 3)), 100 + 300 + 150 + 100, 70.0),  # and 10 s at 10/s again
        (scenario(window=10.0, halved=(1 / 3, 2 / 3)), 100 + 200, 20.0),  # done before the halving
    ],
)
def test_the_lower_bound_spends_the_banked_window_then_the_limit_as_it_refills(s, work, seconds):
    assert lower_bound(s, work) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "s, work, phase, seconds",
    [
        (scenario(window=10.0), 100, 3.0, 0.0),  # the first window's 100 covers it
        (scenario(window=10.0), 101, 3.0, 7.0),  # one more: the first reset, 7 s on
        (scenario(window=10.0), 300, 3.0, 17.0),  # three windows: the second reset
        (scenario(window=10.0), 300, 9.9, 10.1),  # the first request late in its window: resets sooner
        (scenario(window=10.0, halved=(1 / 3, 2 / 3)), 100 + 100 + 100 + 50 + 50 + 50 + 100, 0.0, 60.0),  # halved 30-60 s
    ],
)
def test_the_lower_bound_of_fixed_windows_spends_each_window_as_it_resets(s, work, phase, seconds):
    assert lower_bound_fixed(s, work, phase) == pytest.approx(seconds)


def test_with_fixed_windows_a_run_is_measured_against_its_own_resets():
    s = replace(scenario(window=10.0), window_kind="fixed")
    run = {"seconds": 18.0, "start_up": 1.0, "phase": 3.0, "rate_limited": 0, "requests": 10}
    f = figures(s, 300, run)  # bound: 17 s from the first request
    assert f["sustained"] == pytest.approx(17 / 17) and f["vs_bound"] == pytest.approx(18 / 17)


@pytest.mark.parametrize(
    "s, seconds, start_up, ratio",
    [
        (scenario(window=10.0), 60.0, 0.0, 1.0),  # work 700: 600 beyond the bank, in 60 s at 10 a second
        (scenario(window=10.0), 120.0, 0.0, 0.5),
        (scenario(window=10.0, halved=(1 / 3, 2 / 3)), 70.0, 0.0, 1.0),  # 300 + 150 + 100 refilled: 30 s at half
        (scenario(window=10.0, halved=(1 / 3, 2 / 3)), 80.0, 0.0, 550 / 650),
        (scenario(window=10.0, halved=(1 / 3, 2 / 3)), 70.0, 10.0, 1.0),  # 10 s before the first request, at 10/s
    ],
)
def test_sustained_is_work_beyond_the_bank_over_the_budget_refilled(s, seconds, start_up, ratio):
    work = 100 + 300 + 150 + 100 if s.halved else 700
    assert sustained(s, work, seconds, start_up) == pytest.approx(ratio)


@pytest.mark.parametrize("s", [scenario(limit=6000), scenario(limit=6000, window=1.0),
                               scenario(limit=6000, window=10.0, halved=(1 / 3, 2 / 3)),
                               scenario(binding="requests", batch=8)])
def test_a_corpus_is_sized_to_the_scenarios_lower_bound(s):
    s = replace(s, seconds=3)
    texts = corpus(s)
    tokens = sum(count_tokens(t) for t in texts)
    assert lower_bound(s, work_of(s, texts, tokens)) == pytest.approx(3, abs=0.11)  # within one text or request


def test_the_markdown_table_has_a_row_per_scenario_and_client_named_on_its_first():
    results = [{**run("embedpipe", 60.0), "rows_lost": 0, "start_up": 0.0},
               {**run("openai-loop", 80.0, error="RateLimitError: ...", rate_limited=7), "rows_lost": 6_100,
                "start_up": 0.0}]
    table = markdown_table([(scenario(window=10.0), ["a text"] * 6_100, 700, results),
                            (replace(scenario(), name="t"), ["a text"] * 6_100, 1_200, results[:1])])
    header, rule, *rows = table.splitlines()
    assert header.startswith("| scenario | client | seconds | sustained ÷ limit | 429s ÷ requests | rows lost |")
    assert rule.count("---") == header.count("|") - 1
    assert [row.split(" | ")[1:] for row in rows] == [
        ["embedpipe", "60.00", "1.000", "0.0000", "0", "1.000 |"],
        ["openai-loop", "80.00 (failed)", "0.750", "0.0700", "6,100", "1.333 |"],
        ["embedpipe", "60.00", "1.000", "0.0000", "0", "1.000 |"],
    ]
    assert rows[0].startswith("| s: 600 RPM, 600 TPM, 10 s window;") and rows[1].startswith("|  | openai-loop")
    assert rows[2].startswith("| t: 600 RPM, 600 TPM, 60 s window;")


@pytest.mark.parametrize("headers, limits", [("all", (None, None)), ("remaining", (600, 600))])
def test_a_server_that_says_only_what_is_left_has_embedpipe_told_the_limits(tmp_path, headers, limits):
    s = scaled(scenario(), quick=False, window_kind="bucket", limit_headers=headers)
    embedding = embedpipe_config("http://127.0.0.1:9/v1", s, str(tmp_path)).embedding
    assert (embedding.requests_per_minute, embedding.tokens_per_minute) == limits
    assert ("headers: remaining only" in describe(s, 1, 1, 1)) == (headers == "remaining")
