"""OpenAIEmbedder through real HTTP to the loopback server."""

import base64
import threading
import time

import httpx2
import numpy as np
import pytest

from pipeline.config import EmbeddingConfig
from pipeline.errors import ProviderError
from pipeline.providers.openai import OpenAIEmbedder
from pipeline.providers.openai_answers import decode_response
from pipeline.providers.packing import pack_batches
from pipeline.text.tokens import count_tokens
from tests.fakes.openai_server import (
    FakeOpenAI,
    data_not_a_list,
    drop_last_item,
    duplicate_index,
    empty_body,
    fake_vector,
    index_as_bool,
    index_as_float,
    index_as_string,
    invalid_base64,
    items_not_objects,
    json_array_body,
    nan_vector,
    no_data,
    not_json,
    truncated_base64,
    usage_as_string,
    vector_as_list,
    vector_as_null,
    vector_as_number,
    wrong_dimension,
)

MALFORMED = [
    truncated_base64, invalid_base64, vector_as_number, vector_as_list, vector_as_null, index_as_string, index_as_float,
    index_as_bool, data_not_a_list, items_not_objects, empty_body, json_array_body,
]
BAD_ANSWERS = [nan_vector, drop_last_item, duplicate_index, wrong_dimension, not_json, no_data, *MALFORMED]


def embedder(server, **overrides):
    settings = {"provider": "openai", "model": "text-embedding-3-small", "dimensions": server.dimensions, "base_url": server.base_url}
    settings["api_key_env"] = "OPENAI_API_KEY"  # named: a server other than OpenAI's gets no key otherwise
    config = EmbeddingConfig(**{**settings, **overrides})
    return OpenAIEmbedder(config, api_key="sk-test")


def test_shuffled_items_are_put_back_in_order(fake_openai):
    texts = [f"text number {i}" for i in range(300)]
    vectors = embedder(fake_openai).embed(texts, [4] * 300)
    np.testing.assert_allclose(vectors, np.stack([fake_vector(t, 16) for t in texts]), atol=1e-6)


@pytest.mark.parametrize(
    "counts, max_inputs, max_tokens, expected",
    [
        ([1] * 5000, 2048, 300_000, [2048, 2048, 904]),
        ([8000] * 80, 2048, 300_000, [37, 37, 6]),
        ([5, 5, 5], 2, 100, [2, 1]),
        ([], 2048, 300_000, []),
    ],
)
def test_requests_stay_within_input_and_token_limits(counts, max_inputs, max_tokens, expected):
    assert [s.stop - s.start for s in pack_batches(counts, max_inputs, max_tokens)] == expected


def test_a_call_s_requests_all_leave_before_those_of_a_call_started_after_it():
    # A record batch is written once its last answer is in: the next batch's requests must
    # not overtake it, or the run ends waiting on a batch it could have finished first.
    finished: dict[str, float] = {}

    def embed(call: str, count: int) -> None:
        texts = [f"{call} {i}" for i in range(count)]
        for _ in shared.embed_iter(texts, [2] * len(texts), store=lambda *_: time.sleep(0.01)):  # as slow as a cache write
            pass
        finished[call] = time.monotonic()

    with FakeOpenAI(latency=0.05) as server:
        shared = embedder(server, batch_size=1, max_concurrency=2)
        first = threading.Thread(target=embed, args=("first", 8))
        first.start()
        while server.requests == 0:
            time.sleep(0.001)
        embed("second", 4)
        first.join()
    assert finished["first"] < finished["second"]
    order = [texts[0].split()[0] for texts in server.admitted_inputs]
    # Two requests that leave together (their threads freed by answers that came together) reach
    # the server's lock in either order: one may be charged before one that left just before it.
    assert order.count("first") == 8 and "second" not in order[:7], order


def test_the_budget_refills_from_when_the_first_request_left_not_from_when_it_was_counted(monkeypatch):
    # The first request waits 0.5 s to leave (here a connection pool still being built; on the
    # real API a new connection and its TLS handshake), so the server's budget starts refilling
    # 0.5 s after ours would have: the next request must not count that half second.
    build = httpx2.HTTPTransport
    monkeypatch.setattr(httpx2, "HTTPTransport", lambda **options: time.sleep(0.5) or build(**options))
    bank = [f"{i} " + "word " * 400 for i in range(14)]  # most of the minute's 6,000 tokens
    after = "word " * (6_000 - sum(map(count_tokens, bank)) + 30)  # due 0.3 s after the first request
    with FakeOpenAI(tpm=6_000) as server:
        client = embedder(server, tokens_per_minute=6_000)
        for texts in (bank, [after]):
            client.embed(texts, [count_tokens(t) for t in texts])
        client.close()
    assert server.rate_limited == 0 and len(server.calls) == 15


def test_a_call_still_waiting_when_its_embedder_is_closed_fails_rather_than_coming_back_short():
    outcome = []

    def embed() -> None:
        try:
            outcome.append(shared.embed([f"text {i}" for i in range(4)], [2] * 4))
        except ProviderError as exc:
            outcome.append(exc)

    with FakeOpenAI(latency=0.1) as server:
        shared = embedder(server, batch_size=1, max_concurrency=1)
        caller = threading.Thread(target=embed, daemon=True)
        caller.start()
        while server.requests == 0:
            time.sleep(0.001)
        shared.close()  # as a failing run closes what it opened, with another partition mid-call
        caller.join(timeout=10)
    assert not caller.is_alive(), "the call never returned"
    assert isinstance(outcome[0], ProviderError) and "closed" in str(outcome[0])


def test_dimensions_are_sent_when_configured(fake_openai):
    vectors = embedder(fake_openai, dimensions=8).embed(["hello"], [1])
    assert vectors.shape == (1, 8)


@pytest.mark.parametrize(
    "status, code, message",
    [
        (401, "invalid_api_key", "API key was refused"),
        (403, "forbidden", "may not use model"),
        (404, "model_not_found", "was not found"),
        (429, "insufficient_quota", "quota is used up"),
    ],
)
def test_fatal_answers_stop_at_once_with_the_fix(fake_openai, status, code, message):
    fake_openai.fail_next(status, code=code, message="Incorrect API key provided: sk-te**")
    with pytest.raises(ProviderError, match=message) as error:
        embedder(fake_openai).embed(["hello"], [1])
    assert fake_openai.requests == 1 and "sk-te" not in str(error.value)


@pytest.mark.parametrize("corrupt", BAD_ANSWERS)
def test_a_bad_response_is_retried_and_never_stored(fake_openai, corrupt):
    fake_openai.corruptions.append(corrupt)
    texts = ["one", "two", "three"]
    vectors = embedder(fake_openai).embed(texts, [1, 1, 1])
    np.testing.assert_allclose(vectors, np.stack([fake_vector(t, 16) for t in texts]), atol=1e-6)
    assert fake_openai.requests == 2


@pytest.mark.parametrize("corrupt", [nan_vector, drop_last_item, not_json, truncated_base64, data_not_a_list])
def test_a_response_that_stays_bad_fails_loudly(fake_openai, corrupt):
    fake_openai.corruptions.extend([corrupt] * 3)
    with pytest.raises(ProviderError, match="3 attempts"):
        embedder(fake_openai, max_attempts=3).embed(["one", "two"], [1, 1])


def test_server_errors_are_retried(fake_openai):
    fake_openai.fail_next(500, times=2)
    fake_openai.fail_next(429, code="rate_limit_exceeded", headers={"retry-after-ms": "10"})
    client = embedder(fake_openai)
    assert client.embed(["hello"], [1]).shape == (1, 16)
    assert fake_openai.requests == 4 and client.sent.retries == {"server error": 2, "429": 1}


def test_a_rejected_batch_is_split_never_resent_whole(fake_openai):
    fake_openai.fail_next(400, message="too many tokens")
    client = embedder(fake_openai)
    vectors = client.embed(["a", "b", "c", "d"], [1] * 4)
    assert vectors.shape == (4, 16) and fake_openai.requests == 3


@pytest.mark.parametrize("text", ["", "word " * 9000])
def test_the_fake_rejects_what_the_real_api_rejects(fake_openai, text):
    with pytest.raises(ProviderError, match="rejected a text"):
        embedder(fake_openai).embed([text], [1])
    assert len(fake_openai.rejected) == 1


def test_a_usage_of_the_wrong_type_is_ignored_and_the_vectors_kept(fake_openai):
    fake_openai.corruptions.append(usage_as_string)
    vectors = embedder(fake_openai).embed(["one", "two"], [1, 1])
    np.testing.assert_allclose(vectors, np.stack([fake_vector(t, 16) for t in ["one", "two"]]), atol=1e-6)
    assert fake_openai.requests == 1


def _b64(values, cut: int = 0) -> str:
    """`values` as float32 base64, the last `cut` bytes left out."""
    raw = np.asarray(values, dtype="<f4").tobytes()
    return base64.b64encode(raw[: len(raw) - cut]).decode()


SECOND = {"index": 1, "embedding": _b64([0, 1])}  # a good item for the second text
# data (the answer's `data`, for two texts of 2 dimensions) -> why each position is unusable
DECODED = {
    "good": ([SECOND, {"index": 0, "embedding": _b64([1, 0])}], {}),
    "cut short": ([{"index": 0, "embedding": _b64([1, 0], cut=2)}, SECOND], {0: "not a whole number"}),
    "not base64": ([{"index": 0, "embedding": "@@@@"}, SECOND], {0: "not valid base64"}),
    "not ASCII": ([{"index": 0, "embedding": "é" * 8}, SECOND], {0: "not valid base64"}),
    "empty vector": ([{"index": 0, "embedding": ""}, SECOND], {0: "0 bytes"}),
    "number": ([{"index": 0, "embedding": 3}, SECOND], {0: "is a number"}),
    "list": ([{"index": 0, "embedding": [1.0, 0.0]}, SECOND], {0: "is a list"}),
    "object": ([{"index": 0, "embedding": {}}, SECOND], {0: "is an object"}),
    "null": ([{"index": 0, "embedding": None}, SECOND], {0: "is null"}),
    "index repeated": ([{"index": 0, "embedding": _b64([1, 0])}] * 2, {0: "repeated", 1: "missing"}),
    "not finite": ([{"index": 0, "embedding": _b64([np.nan, 0])}, SECOND], {0: "non-finite"}),
    "all zeros": ([{"index": 0, "embedding": _b64([0, 0])}, SECOND], {0: "all zeros"}),
    "index a string": ([{"index": "0", "embedding": _b64([1, 0])}, SECOND], {0: "missing"}),
    "index a float": ([{"index": 0.0, "embedding": _b64([1, 0])}, SECOND], {0: "missing"}),
    "index a bool": ([{"index": 0, "embedding": _b64([1, 0])}, {**SECOND, "index": True}], {1: "missing"}),
    "index a list": ([{"index": [0], "embedding": _b64([1, 0])}, SECOND], {0: "missing"}),
    "items not objects": (["x", 1, None, [0]], {0: "missing", 1: "missing"}),
    "data an object": ({"0": {"index": 0}}, {0: "an object, not a list", 1: "an object, not a list"}),
    "data null": (None, {0: "null, not a list", 1: "null, not a list"}),
    "data a string": ("[]", {0: "a string, not a list", 1: "a string, not a list"}),
}


@pytest.mark.parametrize("case", DECODED)
@pytest.mark.parametrize("dimensions", [2, None])
def test_any_malformed_data_is_a_reason_per_item_never_an_exception(case, dimensions):
    data, expected = DECODED[case]
    vectors, bad = decode_response(data, 2, dimensions)
    assert set(bad) == set(expected) and all(expected[i] in bad[i] for i in bad), bad
    good = {0: [1, 0], 1: [0, 1]}
    for i in set(good) - set(bad):
        np.testing.assert_array_equal(vectors[i], good[i])


@pytest.mark.parametrize("corrupt", [truncated_base64, data_not_a_list, empty_body])
def test_a_malformed_answer_to_the_dimension_probe_is_retried(fake_openai, corrupt):
    fake_openai.models += ("text-embedding-3-small-ft",)  # a model whose dimensions nobody knows
    fake_openai.corruptions.append(corrupt)
    assert embedder(fake_openai, dimensions=None, model="text-embedding-3-small-ft").dimensions == 16
    assert fake_openai.requests == 2


def test_a_probe_that_stays_malformed_is_one_error_naming_the_fix(fake_openai):
    fake_openai.models += ("text-embedding-3-small-ft",)
    fake_openai.corruptions.extend([truncated_base64] * 3)
    with pytest.raises(ProviderError, match="3 attempts.*cut short.*set embedding.dimensions"):
        embedder(fake_openai, dimensions=None, model="text-embedding-3-small-ft", max_attempts=3).dimensions
    assert fake_openai.requests == 3


@pytest.mark.parametrize(
    ("base_url", "environment"),
    [
        (None, None),
        (None, "http://proxy.internal:8080/openai"),
        ("http://127.0.0.1:8000/v1", None),
        ("http://127.0.0.1:8000/v1/", "http://elsewhere/v1"),
        ("https://Models.Example.com", None),
        ("https://gateway.example.com/v1?tenant=a", None),
        ("https://gateway.example.com/v1/?tenant=a", None),
    ],
)
def test_the_cache_names_the_url_the_client_sends_to(monkeypatch, base_url, environment):
    # Worked out without importing `openai`; a difference would file the same vectors under two names.
    import openai

    from pipeline.providers.openai import api_base_url

    if environment is None:
        monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    else:
        monkeypatch.setenv("OPENAI_BASE_URL", environment)
    client = openai.OpenAI(api_key="sk-test", base_url=base_url)
    assert str(api_base_url(base_url)) == str(client.base_url)
    config = EmbeddingConfig(provider="openai", model="text-embedding-3-small", dimensions=8, base_url=base_url,
                             api_key_env="OPENAI_API_KEY")
    provider = OpenAIEmbedder(config, api_key="sk-test")
    try:
        assert provider.cache_namespace == f"openai:{str(client.base_url).rstrip('/')}:text-embedding-3-small:8"
    finally:
        provider.close()
