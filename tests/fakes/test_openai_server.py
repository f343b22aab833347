"""The fake server's rate limits: windows of budget, fixed windows, limits changed mid-run, no headers.

Plain httpx POSTs to the loopback server, so what is checked is what a client sees on the wire.
"""

import functools
import time

import httpx
import pytest

from pipeline.text.tokens import count_tokens
from tests.fakes.openai_server import FakeOpenAI


def text_of(tokens: int) -> str:
    """A text of exactly `tokens` cl100k tokens."""
    text = " ".join(["hello"] * tokens)
    assert count_tokens(text) == tokens
    return text


@functools.cache
def client() -> httpx.Client:
    return httpx.Client(verify=False)  # plain http to loopback: loading CA certificates would cost ~0.1 s a client


def post(server: FakeOpenAI, tokens: int = 1) -> httpx.Response:
    body = {"model": "text-embedding-3-small", "input": [text_of(tokens)]}
    return client().post(f"{server.base_url}/embeddings", json=body, headers={"authorization": "Bearer sk-test"})


def limits(response: httpx.Response, name: str) -> tuple[str, str]:
    """The limit and remaining headers for `name` ("requests" or "tokens")."""
    return response.headers[f"x-ratelimit-limit-{name}"], response.headers[f"x-ratelimit-remaining-{name}"]


def reset_seconds(response: httpx.Response, name: str) -> float:
    return float(response.headers[f"x-ratelimit-reset-{name}"].removesuffix("s"))


def at_window_start(server: FakeOpenAI, name: str) -> None:
    """Sleep until just after the next fixed window starts, so a burst falls within one window."""
    budget = server.budgets[name]
    elapsed = time.monotonic() - budget.origin
    time.sleep((int(elapsed // budget.window) + 1) * budget.window - elapsed + 0.01)


@pytest.mark.parametrize(
    "limit, window, tokens, burst, statuses",
    [
        # rpm: capacity = rpm * window / 60 requests; refill 1 a second at 60 RPM, too slow to matter in a burst
        ({"rpm": 60}, 10.0, 1, 11, [200] * 10 + [429]),
        ({"rpm": 60}, 3.0, 1, 4, [200] * 3 + [429]),
        ({"rpm": 12}, 60.0, 1, 13, [200] * 12 + [429]),  # the default: a whole minute banked
        # tpm: capacity = tpm * window / 60 tokens
        ({"tpm": 600}, 10.0, 30, 4, [200] * 3 + [429]),
        ({"tpm": 600}, 1.0, 30, 2, [200, 429]),  # 30 > the 10 of capacity: admitted when full, then in debt
    ],
)
def test_a_bucket_banks_window_seconds_of_the_limit(limit, window, tokens, burst, statuses):
    with FakeOpenAI(**limit, window=window) as server:
        answers = [post(server, tokens) for _ in range(burst)]
    assert [a.status_code for a in answers] == statuses
    assert "retry-after-ms" in answers[-1].headers
    assert answers[-1].json()["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize(
    "limit, name, tokens, headers, reset",
    [
        ({"tpm": 600}, "tokens", 30, ("600", "70"), 3.0),  # 30 of 100 spent: 3 s at 10 tokens a second
        ({"tpm": 600, "rpm": 60}, "requests", 30, ("60", "9"), 1.0),
        ({"tpm": 60}, "tokens", 30, ("60", "0"), 30.0),  # 30 of 10: 20 in debt, remaining floors at 0
    ],
)
def test_bucket_headers_show_the_per_minute_limit_and_the_level(limit, name, tokens, headers, reset):
    with FakeOpenAI(**limit, window=10.0) as server:
        answer = post(server, tokens)
    assert answer.status_code == 200
    assert limits(answer, name) == headers
    assert reset_seconds(answer, name) == pytest.approx(reset, abs=0.1)


@pytest.mark.parametrize(
    "limit, name, tokens, statuses_then_next_window",
    [
        ({"rpm": 400}, "requests", 1, ([200, 200, 429], 200)),  # 2 a window
        ({"tpm": 4000}, "tokens", 30, ([200, 429], 200)),  # 30 > the 20 of a window: debt is not carried over
    ],
)
def test_fixed_windows_reset_at_each_multiple_of_the_window(limit, name, tokens, statuses_then_next_window):
    statuses, next_window = statuses_then_next_window
    with FakeOpenAI(**limit, window=0.3, window_kind="fixed") as server:
        at_window_start(server, name)
        answers = [post(server, tokens) for _ in statuses]
        refused = answers[-1]
        at_window_start(server, name)
        after = post(server, tokens)
    assert [a.status_code for a in answers] == statuses
    assert limits(refused, name)[1] == "0"
    assert 0 < reset_seconds(refused, name) <= 0.3
    assert 0 < int(refused.headers["retry-after-ms"]) <= 301
    assert after.status_code == next_window


def test_a_fixed_window_reports_what_is_left_of_it():
    with FakeOpenAI(tpm=4000, window=0.3, window_kind="fixed") as server:
        at_window_start(server, "tokens")
        answer = post(server, 5)
    assert limits(answer, "tokens") == ("4000", "15")
    assert 0 < reset_seconds(answer, "tokens") <= 0.3


# Each step: set_limits' arguments (None: no call), tokens posted, then the status and tokens headers expected.
HALVED = [
    (None, 30, 200, ("600", "70")),
    ({"tpm": 300}, 30, 200, ("300", "20")),  # capacity 50: the level of 70 is clipped to it
    (None, 30, 429, ("300", "20")),
    ({"tpm": 600}, 10, 200, ("600", "10")),  # back up: capacity 100 again, the level refills from 20
]


def test_set_limits_changes_enforcement_and_headers_at_once():
    with FakeOpenAI(tpm=600, window=10.0) as server:
        seen = []
        for change, tokens, _, _ in HALVED:
            if change is not None:
                server.set_limits(**change)
            answer = post(server, tokens)
            seen.append((answer.status_code, limits(answer, "tokens")))
    assert seen == [(status, headers) for _, _, status, headers in HALVED]


def test_set_limits_can_add_a_limit_and_leaves_the_other_alone():
    with FakeOpenAI(tpm=600, window=10.0) as server:
        server.set_limits(rpm=6)  # capacity 1 request
        answers = [post(server) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 429]
    assert limits(answers[0], "requests") == ("6", "0")
    assert limits(answers[0], "tokens") == ("600", "99")


@pytest.mark.parametrize("limit", [{"rpm": 60}, {"tpm": 600}, {"rpm": 60, "tpm": 600}])
def test_no_limit_headers_when_the_server_sends_none(limit):
    with FakeOpenAI(**limit, window=1.0, limit_headers="none") as server:
        answers = [post(server, 30) for _ in range(3)]
    assert answers[0].status_code == 200 and answers[-1].status_code == 429
    for answer in answers:
        assert not [name for name in answer.headers if name.startswith("x-ratelimit-")]
    assert "retry-after-ms" in answers[-1].headers


def test_azure_style_headers_say_only_what_is_left():
    with FakeOpenAI(rpm=60, tpm=600, window=10.0, limit_headers="remaining") as server:
        answer = post(server, 30)
    assert sorted(name for name in answer.headers if name.startswith("x-ratelimit-")) == [
        "x-ratelimit-remaining-requests",
        "x-ratelimit-remaining-tokens",
    ]
    assert (answer.headers["x-ratelimit-remaining-requests"], answer.headers["x-ratelimit-remaining-tokens"]) == ("9", "70")


def test_admissions_record_when_and_how_many_tokens():
    with FakeOpenAI(tpm=600, window=10.0) as server:
        for tokens in (5, 7, 200, 11):
            post(server, tokens)
    assert [tokens for _, tokens in server.admissions] == [5, 7, 11]  # the 200 was refused
    assert [t for t, _ in server.admissions] == server.admitted
    assert sum(tokens for _, tokens in server.admissions) == server.tokens_served


def test_latency_grows_with_the_request_tokens():
    with FakeOpenAI(latency=0.01, latency_per_1k_tokens=0.2) as server:
        started = time.monotonic()
        post(server, 1000)
        assert time.monotonic() - started >= 0.21


@pytest.mark.parametrize(
    "path, status, code",
    [
        ("/openai/deployments/emb-small/embeddings?api-version=2024-10-21", 200, None),
        ("/openai/deployments/emb-small/embeddings", 404, "404"),  # no api-version: Azure's "Resource not found"
        ("/openai/deployments/other/embeddings?api-version=2024-10-21", 404, "DeploymentNotFound"),
    ],
)
def test_the_azure_route_needs_an_api_version_and_a_known_deployment(path, status, code):
    with FakeOpenAI(deployments={"emb-small": "text-embedding-3-small"}) as server:
        body = {"model": "ignored-as-azure-does", "input": ["hello"]}
        response = client().post(f"{server.azure_endpoint}{path}", json=body, headers={"api-key": "azure-key"})
    assert response.status_code == status
    if code:
        assert response.json()["error"]["code"] == code
    else:
        assert response.json()["model"] == "text-embedding-3-small" and len(response.json()["data"]) == 1
    [(method, seen_path, headers)] = server.seen
    assert (method, seen_path, headers["api-key"]) == ("POST", path, "azure-key")
    assert "authorization" not in headers and server.requests == (status == 200)
