"""Every failure the real API produces, injected at the HTTP boundary, checked on the output:
no lost row, no misaligned vector, no text paid for twice except through counted timeouts."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.errors import ProviderError
from pipeline.run.steps import run_pipeline
from tests.conftest import openai_config, write_parquet
from tests.fakes import openai_server
from tests.fakes.openai_server import FakeOpenAI, drop_last_item, fake_vector, nan_vector, truncated_base64

TEXTS = [f"ticket {i}: the printer on floor {i % 7} jams" for i in range(240)]


# fault -> (inject, texts whose own answer was unusable and so had to be paid for again)
FAULTS = {
    "429 storm with retry-after": (lambda s: s.fail_next(429, code="rate_limit_exceeded", headers={"retry-after-ms": "20"}, times=12), 0),
    "429 without retry-after": (lambda s: s.fail_next(429, code="rate_limit_exceeded", times=3), 0),
    "burst of 5xx": (lambda s: [s.fail_next(status, times=2) for status in (500, 502, 503)], 0),
    "too large request": (lambda s: s.fail_next(400, message="Requested 400000 tokens, max 300000 tokens per request", times=2), 0),
    "short responses": (lambda s: s.corruptions.extend([drop_last_item] * 3), 3),
    "NaN values": (lambda s: s.corruptions.extend([nan_vector] * 3), 3),
}


def run(tmp_path, server, **overrides):
    source = write_parquet(tmp_path / "in.parquet", {"id": list(range(len(TEXTS))), "text": TEXTS})
    config = openai_config(tmp_path, server, source, **{"embedding__batch_size": 16, "embedding__max_concurrency": 4, **overrides})
    manifest = run_pipeline(config)
    return manifest, pq.read_table(config.output.path)


def assert_every_row_exact(table):
    assert table.column("id").to_pylist() == list(range(len(TEXTS)))
    expected = np.stack([fake_vector(t, 16) for t in TEXTS])
    np.testing.assert_allclose(np.array(table.column("embedding").to_pylist()), expected, atol=1e-6)


@pytest.mark.parametrize("fault", FAULTS)
def test_recoverable_faults_lose_nothing_and_pay_once(tmp_path, fault):
    inject, unusable = FAULTS[fault]
    with FakeOpenAI(shuffle=True) as server:
        inject(server)
        manifest, table = run(tmp_path, server)
    assert_every_row_exact(table)
    assert sum(n - 1 for n in server.calls.values()) == unusable, "only unusable answers are paid for again"
    assert manifest["stats"]["retries"].get("bad response", 0) == unusable
    assert sum(manifest["stats"]["retries"].values()) >= 2


# malformed answer -> texts paid for again each time it is met: its first item's, or its request's 16
MALFORMED = {
    "base64 vector cut short": ("truncated_base64", 1),
    "invalid base64": ("invalid_base64", 1),
    "vector a number": ("vector_as_number", 1),
    "vector a list": ("vector_as_list", 1),
    "vector null": ("vector_as_null", 1),
    "index a string": ("index_as_string", 1),
    "index a float": ("index_as_float", 1),
    "index a bool": ("index_as_bool", 1),
    "data not a list": ("data_not_a_list", 16),
    "items not objects": ("items_not_objects", 16),
    "empty body": ("empty_body", 16),
    "a JSON array body": ("json_array_body", 16),
}


@pytest.mark.parametrize("malformed", MALFORMED)
def test_malformed_answers_are_retried_for_what_they_spoiled_and_every_row_is_exact(tmp_path, malformed):
    corruption, spoiled = MALFORMED[malformed]
    with FakeOpenAI(shuffle=True) as server:
        server.corruptions.extend([getattr(openai_server, corruption)] * 3)
        manifest, table = run(tmp_path, server)
    assert_every_row_exact(table)
    assert sum(n - 1 for n in server.calls.values()) == 3 * spoiled, "only what an answer spoiled is paid for again"
    assert manifest["stats"]["retries"] == {"bad response": 3}


def test_a_server_that_always_answers_malformed_is_one_error_after_max_attempts(tmp_path):
    with FakeOpenAI() as server:
        server.corruptions.extend([truncated_base64] * 1000)
        with pytest.raises(ProviderError, match="3 attempts at 16 texts failed; last: .*cut short") as error:
            run(tmp_path, server, embedding__max_attempts=3, embedding__max_concurrency=1)
    assert "\n" not in str(error.value)
    assert max(server.calls.values()) == 3, "no text is asked for more than max_attempts times"
    assert not (tmp_path / "out" / "part-00000.parquet").exists(), "nothing partial is visible"


def test_slow_answers_time_out_are_retried_and_reported(tmp_path):
    with FakeOpenAI(shuffle=True) as server:
        server.slow_next(3.0, times=2)
        manifest, table = run(tmp_path, server, embedding__request_timeout_seconds=1.0)
    assert_every_row_exact(table)
    stats = manifest["stats"]
    assert stats["retries"]["timeout"] == 2
    paid_twice = [text for text, n in server.calls.items() if n > 1]
    assert len(paid_twice) == 32 and max(server.calls.values()) == 2  # the two timed-out requests of 16
    assert stats["timed_out_tokens"] > 0


@pytest.mark.parametrize("concurrency", [1, 4])
def test_exhausted_quota_stops_at_once_and_the_next_run_resumes_from_the_cache(tmp_path, concurrency):
    with FakeOpenAI() as server:
        server.quota_requests = 5  # the account runs dry after five requests
        with pytest.raises(ProviderError, match="quota is used up"):
            run(tmp_path, server, embedding__max_concurrency=concurrency)
        assert not (tmp_path / "out" / "part-00000.parquet").exists(), "nothing partial is visible"
        paid = sum(server.calls.values())
        server.quota_requests = None  # credit added
        manifest, table = run(tmp_path, server, embedding__max_concurrency=concurrency)
    assert_every_row_exact(table)
    assert paid == 5 * 16 and max(server.calls.values()) == 1
    assert manifest["stats"]["cache_hits"] == 5 * 16


# fatal answer -> what the user is told
FATAL = {
    "quota used up": (lambda s: s.fail_next(429, code="insufficient_quota", after=3), "quota is used up"),
    "key refused": (lambda s: s.fail_next(401, code="invalid_api_key", after=3), "API key was refused"),
}


@pytest.mark.parametrize("fatal", FATAL)
def test_a_fatal_answer_also_stops_the_requests_waiting_for_budget(tmp_path, fatal):
    inject, message = FATAL[fatal]
    with FakeOpenAI() as server:
        inject(server)  # the fourth request meets it, while the others wait for budget
        with pytest.raises(ProviderError, match=message):
            run(tmp_path, server, embedding__requests_per_minute=60)  # one a second, after a short burst
    assert server.requests == 4, "no request leaves after the fatal answer"
    assert not (tmp_path / "out" / "part-00000.parquet").exists(), "nothing partial is visible"


def test_a_spent_server_budget_costs_few_429s(tmp_path):
    with FakeOpenAI(rpm=600) as server:
        server.budgets["requests"].level = 0  # another job spent this minute's budget
        manifest, table = run(tmp_path, server, embedding__requests_per_minute=600)
    assert_every_row_exact(table)
    # The first requests in flight meet the spent budget; after that the headers rule. Under
    # load a first retry can meet it too, hence twice max_concurrency.
    assert server.rate_limited <= 2 * 4, server.rate_limited
