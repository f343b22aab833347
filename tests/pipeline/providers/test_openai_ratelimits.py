"""Rate limits as servers enforce them, through the loopback server: with no limits configured,
the client takes them from the server's headers, learns how much of them it banks, follows a
limit that changes, and spends within the window."""

import random
import threading
import time

import pytest

from pipeline.config import EmbeddingConfig
from pipeline.providers.openai import OpenAIEmbedder
from pipeline.run.report import summary_lines
from pipeline.run.steps import run_pipeline
from pipeline.text.tokens import count_tokens
from tests.conftest import openai_config, write_parquet
from tests.fakes.openai_server import FakeOpenAI

WORDS = "invoice refund printer login password shipping delay broken screen battery order account".split()


def corpus(tokens: int, seed: int = 0) -> list[str]:
    """Distinct texts of about 20 tokens each, `tokens` in all."""
    rng = random.Random(seed)
    return [f"{seed}-{i} " + " ".join(rng.choice(WORDS) for _ in range(16)) for i in range(tokens // 20)]


def embed_all(server: FakeOpenAI, texts: list[str], **settings) -> OpenAIEmbedder:
    config = EmbeddingConfig(
        provider="openai", model="text-embedding-3-small", dimensions=server.dimensions,
        base_url=server.base_url, api_key_env="EMBEDPIPE_TEST_KEY", **settings,
    )
    client = OpenAIEmbedder(config, api_key="sk-test")
    client.embed(texts, [count_tokens(t) for t in texts])
    client.close()
    return client


@pytest.mark.parametrize("window", [1.0, 10.0])
def test_a_server_that_banks_seconds_is_learned_from_its_headers(window):
    with FakeOpenAI(tpm=60_000, window=window, latency=0.02) as server:  # 1,000 tokens a second
        texts = corpus(int(1_000 * (window + 4)))  # the window's bank, and four seconds more
        client = embed_all(server, texts)
    # At most the one surprise the limiter learns from. With 1 s, the first request (1,024 tokens,
    # before any limit is known) overdraws a bank of 1,000, and headers never below zero cannot
    # say by how much; on a loaded machine a request can reach the server's limiter later than
    # our clock allows for (10 ms). Either costs one 429 at the start, in a third of runs here.
    assert server.rate_limited <= 1 and len(server.calls) == len(texts)
    assert client.limiter.limit("tokens") == 60_000  # none configured: the server's
    after_first = [tokens for _, tokens in server.admissions[1:]]
    assert max(after_first) <= 1_000 * window / 4  # a quarter of what the window holds


@pytest.mark.parametrize(
    "headers, limits",
    [("all", {}), ("remaining", {"tokens_per_minute": 60_000})],  # Azure's: what is left only, limits configured
)
def test_a_server_of_fixed_windows_has_its_last_window_spent_as_it_opens_not_paced(headers, limits):
    window = 2.0
    with FakeOpenAI(tpm=60_000, window=window, window_kind="fixed", latency=0.02, limit_headers=headers) as server:
        texts = corpus(6_000)  # about 5,700 tokens: the first window (2,000), then two more as they open
        client = embed_all(server, texts, **limits)
        origin = server.budgets["tokens"].origin
    assert client.limiter.tokens.period == pytest.approx(window, abs=0.1)
    assert server.rate_limited <= 2 and len(server.calls) == len(texts)  # the first surprise, and one
    last = max(int((at - origin) // window) for at, _ in server.admissions)
    in_last = [(at - origin) % window for at, _ in server.admissions if int((at - origin) // window) == last]
    assert max(in_last) < window / 2, in_last  # paced at the limit, they would take the whole window


@pytest.mark.parametrize("window_kind", ["fixed", "bucket"])
def test_a_bank_spent_with_many_requests_on_their_way_is_not_overrun_before_the_server_shows_a_refill(window_kind):
    # Azure's tokens: a window counted and reset, its headers say only what is left. Eight seconds
    # banked, answers a second late: dozens of requests are on their way as the bank runs out.
    window, tpm, extra = 8.0, 60_000, 1_500
    with FakeOpenAI(tpm=tpm, window=window, window_kind=window_kind, latency=1.0, limit_headers="remaining") as s:
        texts = corpus(int(tpm / 60 * window) + extra)
        start = time.monotonic()
        embed_all(s, texts, tokens_per_minute=tpm)
        took = time.monotonic() - start
    assert len(s.calls) == len(texts)
    assert s.rate_limited <= 1  # the one request that went past the bank alone, to find out
    if window_kind == "bucket":  # it refilled while the probe was out: the rest goes at the limit
        # The first answer, the refill, a few round trips; a probe at a time would take 8 s or more.
        assert took < 1.0 + extra / (tpm / 60) + 4 * 1.0, took


def test_a_server_that_says_only_what_is_left_and_no_limits_configured_is_named_once_with_the_fix(caplog):
    with FakeOpenAI(tpm=60_000, rpm=6_000, window=1.0, latency=0.02, limit_headers="remaining") as server:
        texts = corpus(2_000)
        embed_all(server, texts)
    assert len(server.calls) == len(texts)  # its 429s held the run back, and every text was embedded
    said = [r.getMessage() for r in caplog.records if "but not the limits" in r.getMessage()]
    assert said == [
        "the server says what is left of its requests and tokens limits but not the limits (no x-ratelimit-limit-* "
        "headers): set embedding.requests_per_minute and embedding.tokens_per_minute to them; until then only its "
        "429s hold this run back"
    ]
    assert not [r for r in caplog.records if "how full its budget is" in r.getMessage()]  # no limits to spend 1 s of


@pytest.mark.parametrize("window", [1.0, 10.0])
def test_a_server_that_says_only_what_is_left_is_spent_within_the_configured_limits(window, caplog):
    with FakeOpenAI(tpm=60_000, window=window, latency=0.02, limit_headers="remaining") as server:
        texts = corpus(int(1_000 * (window + 4)))  # the window's bank, and four seconds more
        client = embed_all(server, texts, tokens_per_minute=60_000)
    assert server.rate_limited <= 1 and len(server.calls) == len(texts)  # as with every header (above)
    # What is left, in seconds of the configured limit, tells the window: spent at once, not 1 s of it.
    assert client.limiter.window.seconds == pytest.approx(window, rel=0.2)
    assert not [r for r in caplog.records if "but not the limits" in r.getMessage()]


def test_a_cap_below_the_servers_limit_holds_and_the_summary_says_so(tmp_path, caplog):
    texts = corpus(4_000)
    source = write_parquet(tmp_path / "in.parquet", {"id": list(range(len(texts))), "text": texts})
    with FakeOpenAI(tpm=6_000_000) as server:
        manifest = run_pipeline(openai_config(tmp_path, server, source, embedding__tokens_per_minute=60_000))
    assert manifest["stats"]["held_back"] == {"tokens": [60_000, 6_000_000]}
    said = [r.getMessage() for r in caplog.records if "holds this run below" in r.getMessage()]
    line = "embedding.tokens_per_minute = 60,000 holds this run below the server's 6,000,000 a minute: raise it or leave it unset"
    assert said == [line]
    summary = [line for line in summary_lines(manifest) if "rate limits" in line]
    assert len(summary) == 1 and "tokens_per_minute 60,000 held the run below the server's 6,000,000" in summary[0]


def test_a_limit_halved_mid_run_and_restored_is_followed_within_a_few_requests_both_ways():
    seen: list[tuple[float, float]] = []  # (when, the client's tokens a minute), at each change

    def change_limits(server, client_box):
        time.sleep(2.0)
        changes = []
        for tpm in (60_000, 120_000):
            changes.append((time.monotonic(), tpm))
            server.set_limits(tpm=tpm)
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                rate = client_box[0].limiter.limit("tokens")
                if rate and (not seen or seen[-1][1] != rate):
                    seen.append((time.monotonic(), rate))
                time.sleep(0.005)
        client_box.append(changes)

    with FakeOpenAI(tpm=120_000, window=2.0, latency=0.02) as server:  # 2,000 tokens a second, 4,000 banked
        texts = corpus(4_000 + 2_000 * 6)
        box: list = []
        config = EmbeddingConfig(
            provider="openai", model="text-embedding-3-small", dimensions=16,
            base_url=server.base_url, api_key_env="EMBEDPIPE_TEST_KEY",
        )
        client = OpenAIEmbedder(config, api_key="sk-test")
        box.append(client)
        watcher = threading.Thread(target=change_limits, args=(server, box), daemon=True)
        watcher.start()
        client.embed(texts, [count_tokens(t) for t in texts])
        watcher.join()
        client.close()
    changes = box[-1]
    for changed_at, tpm in changes:
        followed_at = next(at for at, limit in seen if limit == tpm and at >= changed_at)
        between = [at for at, _ in server.admissions if changed_at <= at <= followed_at]
        assert len(between) <= 3, f"{len(between)} requests went at the old limit of {tpm}"
    assert server.rate_limited <= 2  # those that were on their way when the limit fell


def test_a_fixed_window_limit_halved_and_restored_without_a_word_is_followed_from_the_windows_that_show_it():
    window, full = 1.0, 1_000  # 60,000 tokens a minute: 1,000 a window, counted and reset each second

    def halve_then_restore(server):
        origin = server.budgets["tokens"].origin
        for at, tpm in ((2.1, 30_000), (6.1, 60_000)):  # just after windows 2 and 6 open: their bursts are in
            time.sleep(max(0.0, origin + at * window - time.monotonic()))
            server.set_limits(tpm=tpm)  # Azure's headers say only what is left: nothing tells of it

    with FakeOpenAI(tpm=60_000, window=window, window_kind="fixed", latency=0.02, limit_headers="remaining") as server:
        threading.Thread(target=halve_then_restore, args=(server,), daemon=True).start()
        texts = corpus(2 * full + 4 * full // 2 + 4 * full)
        embed_all(server, texts, tokens_per_minute=60_000)
        origin = server.budgets["tokens"].origin
    assert len(server.calls) == len(texts)
    refused = [int((at - origin) // window) for at, *_ in server.refusals]
    assert [w for w in refused if w >= 4] == [], refused  # window 3 showed half: 4 and 5 opened at that
    admitted = {}
    for at, tokens in server.admissions:
        admitted[int((at - origin) // window)] = admitted.get(int((at - origin) // window), 0) + tokens
    last = max(admitted)
    assert all(admitted[w] > 0.9 * full for w in range(7, last)), admitted  # window 6 showed half, 7 the whole


def test_fixed_windows_whose_limit_halves_before_they_are_found_are_still_found_at_their_period():
    window, full = 1.0, 1_000  # 60,000 tokens a minute: 1,000 a window, counted and reset each second

    def halve_then_restore(server):
        origin = server.budgets["tokens"].origin
        for at, tpm in ((0.5, 30_000), (4.0, 60_000)):  # halved while the first window is spent: nothing found yet
            time.sleep(max(0.0, origin + at - time.monotonic()))
            server.set_limits(tpm=tpm)  # Azure's headers say only what is left: nothing tells of it

    with FakeOpenAI(tpm=60_000, window=window, window_kind="fixed", latency=0.02, limit_headers="remaining") as server:
        threading.Thread(target=halve_then_restore, args=(server,), daemon=True).start()
        texts = corpus(full + 3 * full // 2 + 4 * full)
        client = embed_all(server, texts, tokens_per_minute=60_000)
        origin = server.budgets["tokens"].origin
    assert len(server.calls) == len(texts)
    # Judged by the halved refill measured as a bucket's, the windows were taken for 3 s: 17 of 42 refused, 16 s
    assert client.limiter.tokens.period == pytest.approx(window, abs=0.1)
    assert server.rate_limited <= 4, [round(at - origin, 2) for at, *_ in server.refusals]
    admitted = {}
    for at, tokens in server.admissions:
        admitted[int((at - origin) // window)] = admitted.get(int((at - origin) // window), 0) + tokens
    assert all(admitted.get(w, 0) > 0.85 * full for w in range(5, max(admitted))), admitted  # restored at 4 s


def test_a_bucket_limit_halved_and_restored_without_a_word_is_followed_from_what_the_server_refills():
    full, start = 1_000, time.monotonic()  # 60,000 tokens a minute: 1,000 a second, a second banked

    def halve_then_restore(server):
        for at, tpm in ((3.0, 30_000), (8.0, 60_000)):
            time.sleep(max(0.0, start + at - time.monotonic()))
            server.set_limits(tpm=tpm)  # Azure's headers say only what is left: nothing tells of it

    with FakeOpenAI(tpm=60_000, window=1.0, latency=0.02, limit_headers="remaining") as server:
        threading.Thread(target=halve_then_restore, args=(server,), daemon=True).start()
        texts = corpus(3 * full + 5 * full // 2 + 4 * full)
        embed_all(server, texts, tokens_per_minute=60_000)
    assert len(server.calls) == len(texts)
    refused = [round(at - start, 1) for at, *_ in server.refusals]
    # The surprise at 3 s, and one whose wait shows the slower refill (4 before the wait was read, at 3.1-4.7 s)
    assert len(refused) <= 2, refused
    admitted = sum(tokens for at, tokens in server.admissions if at - start >= 10.0)
    took = server.admissions[-1][0] - start - 10.0
    assert admitted / took > 0.9 * full, (admitted, took)  # two seconds after 8 s, the whole limit again
