"""A loopback stand-in for OpenAI's embeddings endpoint: real HTTP, deterministic vectors.

It enforces the limits the real API enforces (empty input, 8192 tokens per input, 2048
inputs and 300,000 tokens per request) and can be scripted to fail, so tests drive the real
`openai` client through `base_url` and fake nothing inside it. It also answers Azure OpenAI's
route, `/openai/deployments/{name}/embeddings?api-version=...`, for the deployments it knows
(`azure_endpoint` is the resource's address), and records every request's path and headers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np

from pipeline.text.tokens import count_tokens
from tests.fakes.batch_api import FakeBatchAPI

MAX_INPUT_TOKENS = 8192
MAX_INPUTS = 2048
MAX_REQUEST_TOKENS = 300_000


def fake_vector(text: str, dimensions: int) -> np.ndarray:
    """The vector the fake server returns for `text`: seeded by its hash, unit length."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dimensions).astype(np.float32)
    return vector / np.linalg.norm(vector)


# Corruptions for `FakeOpenAI.corruptions`: each spoils one good response's body.
def nan_vector(payload: dict) -> dict:
    payload["data"][0]["embedding"] = base64.b64encode(np.full(16, np.nan, dtype="<f4").tobytes()).decode()
    return payload


def drop_last_item(payload: dict) -> dict:
    payload["data"].pop()
    return payload


def duplicate_index(payload: dict) -> dict:
    payload["data"][-1]["index"] = payload["data"][0]["index"]
    return payload


def wrong_dimension(payload: dict) -> dict:
    payload["data"][0]["embedding"] = base64.b64encode(np.ones(5, dtype="<f4").tobytes()).decode()
    return payload


def not_json(payload: dict) -> bytes:
    return b"<html>502 Bad Gateway</html>"  # a proxy's page, with status 200


def no_data(payload: dict) -> dict:
    del payload["data"]
    return payload


def truncated_base64(payload: dict) -> dict:
    """A vector cut short mid-float, still valid base64: numpy refuses its buffer."""
    raw = base64.b64decode(payload["data"][0]["embedding"])
    payload["data"][0]["embedding"] = base64.b64encode(raw[:-2]).decode()
    return payload


def invalid_base64(payload: dict) -> dict:
    payload["data"][0]["embedding"] = "not*base64!" + payload["data"][0]["embedding"]
    return payload


def vector_as_number(payload: dict) -> dict:
    payload["data"][0]["embedding"] = 0.5
    return payload


def vector_as_list(payload: dict) -> dict:
    payload["data"][0]["embedding"] = ["0.1", None]
    return payload


def vector_as_null(payload: dict) -> dict:
    payload["data"][0]["embedding"] = None
    return payload


def index_as_string(payload: dict) -> dict:
    payload["data"][0]["index"] = str(payload["data"][0]["index"])
    return payload


def index_as_float(payload: dict) -> dict:
    payload["data"][0]["index"] = float(payload["data"][0]["index"])  # equal to, and hashed as, the int
    return payload


def index_as_bool(payload: dict) -> dict:
    payload["data"][0]["index"] = True  # equal to, and hashed as, 1
    return payload


def data_not_a_list(payload: dict) -> dict:
    payload["data"] = {str(item["index"]): item for item in payload["data"]}
    return payload


def items_not_objects(payload: dict) -> dict:
    payload["data"] = [json.dumps(item) for item in payload["data"]]
    return payload


def usage_as_string(payload: dict) -> dict:
    payload["usage"] = "many tokens"  # the vectors are fine: nothing to retry
    return payload


def empty_body(payload: dict) -> bytes:
    return b""


def json_array_body(payload: dict) -> list:
    return payload["data"]


class Budget:
    """One per-minute limit as a server enforces it: `window` seconds of budget banked.

    "bucket" (the API's way): a token bucket of capacity `limit * window / 60`, refilled
    continuously at `limit / 60` a second, starting full; window=60 banks a whole minute.
    "fixed": a counter of that capacity that resets at each multiple of `window` seconds from
    the start, nothing carried over. Either way a request above the whole capacity is admitted
    only when the budget is full, and leaves it in debt.
    """

    def __init__(self, per_minute: float, window: float = 60.0, kind: str = "bucket"):
        if kind not in ("bucket", "fixed"):
            raise ValueError(f"window_kind must be 'bucket' or 'fixed', not {kind!r}")
        self.limit = per_minute
        self.window = window
        self.kind = kind
        self.origin = time.monotonic()  # fixed windows start at multiples of `window` from here
        self.level = self.capacity
        self.updated = self.origin
        self.spending = False  # set by the first charge
        self.idle_seconds = 0.0  # refill lost to a full bucket since then: budget a client left unused

    @property
    def capacity(self) -> float:
        return self.limit * self.window / 60

    def refill(self) -> None:
        now = time.monotonic()
        if self.kind == "fixed":
            if self._window_index(now) != self._window_index(self.updated):
                self.level = self.capacity
        else:
            refilled = self.level + (now - self.updated) * self.limit / 60
            if self.spending and refilled > self.capacity:
                self.idle_seconds += (refilled - self.capacity) * 60 / self.limit
            self.level = min(self.capacity, refilled)
        self.updated = now

    def admits(self, amount: float) -> bool:
        """Whether `amount` may be charged now (after `refill`)."""
        return self.level >= min(amount, self.capacity)

    def charge(self, amount: float) -> None:
        self.level -= amount
        self.spending = True

    def set_limit(self, per_minute: float) -> None:
        """Enforce a new per-minute limit from now on: the capacity follows, the level is clipped to it."""
        self.refill()
        self.limit = per_minute
        self.level = min(self.level, self.capacity)

    def seconds_until(self, amount: float) -> float:
        """How long until `amount` is admitted, if nothing else is charged."""
        if self.admits(amount):
            return 0.0
        if self.kind == "fixed":
            return self._next_window_in()
        return (min(amount, self.capacity) - self.level) * 60 / self.limit

    def headers(self, name: str) -> dict:
        if self.kind == "fixed":
            reset = self._next_window_in()
        else:
            reset = (self.capacity - self.level) * 60 / self.limit
        return {
            f"x-ratelimit-limit-{name}": str(int(self.limit)),
            f"x-ratelimit-remaining-{name}": str(max(0, int(self.level))),
            f"x-ratelimit-reset-{name}": f"{reset:.3f}s",
        }

    def _window_index(self, at: float) -> int:
        return int((at - self.origin) // self.window)

    def _next_window_in(self) -> float:
        now = time.monotonic()
        return (self._window_index(now) + 1) * self.window - (now - self.origin)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # a real server's backlog: socketserver's 5 resets a burst of new connections

    def handle_error(self, request, client_address):
        pass  # a client killed mid-request (as tests do) is not the server's error


class FakeOpenAI:
    """Start with `with FakeOpenAI() as server:`; point clients at `server.base_url`.

    `rpm` and `tpm` enforce rate limits with 429s and `x-ratelimit-*` headers: `limit_headers`
    "all" (limit, remaining, reset: OpenAI's), "remaining" (only what is left: Azure OpenAI's) or
    "none"; each banks `window` seconds of budget, as a token bucket or, with
    `window_kind="fixed"`, as counters reset every `window` seconds (see `Budget`); `set_limits`
    changes them mid-run. `latency` plus `latency_per_1k_tokens` per 1,000 tokens delays every
    answer within the limits; `trip` delays every request before the limits see it (a network's
    one-way trip: a client's clock and the server's count apart by that much).
    """

    def __init__(self, dimensions: int = 16, shuffle: bool = False,
                 models: tuple[str, ...] = ("text-embedding-3-small",), rpm: float | None = None,
                 tpm: float | None = None, latency: float = 0.0, window: float = 60.0, window_kind: str = "bucket",
                 limit_headers: str = "all", latency_per_1k_tokens: float = 0.0,
                 deployments: dict[str, str] | None = None, host: str = "127.0.0.1", trip: float = 0.0):
        self.dimensions = dimensions
        self.deployments = deployments or {"emb-small": models[0]}  # Azure: deployment name -> the model behind it
        self.shuffle = shuffle
        self.models = models
        self.window, self.window_kind = window, window_kind
        limits = (("requests", rpm), ("tokens", tpm))
        self.budgets = {name: Budget(limit, window, window_kind) for name, limit in limits if limit}
        if limit_headers not in ("all", "remaining", "none"):
            raise ValueError(f"limit_headers must be 'all', 'remaining' or 'none', not {limit_headers!r}")
        self.limit_headers = limit_headers
        self.latency = latency
        self.latency_per_1k_tokens = latency_per_1k_tokens
        self.trip = trip
        self.rate_limited = 0  # requests answered 429 for going over rpm or tpm
        self.refusals: list[tuple] = []  # (time.monotonic(), budget, level, needed) of each
        self.tokens_served = 0
        self.calls: Counter[str] = Counter()  # texts embedded, per text
        self.admitted_inputs: list[list[str]] = []  # the texts of each request within the limits, in the order charged
        self.requests = 0  # every request, answered or refused
        self.admitted: list[float] = []  # when each request within the limits was charged
        self.admissions: list[tuple[float, int]] = []  # (time.monotonic(), tokens) of each, for rates over any interval
        self.authorizations: Counter[str] = Counter()  # Authorization headers seen
        self.seen: list[tuple[str, str, dict[str, str]]] = []  # (method, path with query, headers lowercased) of each
        self.peers: Counter[str] = Counter()  # embeddings requests answered 200, by the client's address
        self.answered: list[tuple[float, str, list]] = []  # (time.monotonic(), client address, texts) of each
        self.first_request_at: float | None = None  # time.monotonic() of the first request
        self.rejected: list[str] = []  # why each 400 was sent
        self.faults: deque = deque()  # (status, body, headers) answered to the next requests; None: answer as usual
        self.corruptions: deque = deque()  # functions applied to the next good responses' bodies
        self.delays: deque = deque()  # extra seconds before the next good responses are sent
        self.quota_requests: int | None = None  # answered requests before the quota runs out
        self._lock = threading.Lock()
        self.batch_api = FakeBatchAPI(self._batch_line_body)
        self._server = _QuietServer((host, 0), self._handler())

    @property
    def base_url(self) -> str:
        return f"http://{self._server.server_address[0]}:{self._server.server_address[1]}/v1"

    @property
    def azure_endpoint(self) -> str:
        """The address of an Azure OpenAI resource: requests go to its /openai/... routes."""
        return f"http://{self._server.server_address[0]}:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeOpenAI":
        # polled every 50 ms, so `shutdown` (which waits for a poll) takes no 0.5 s per server
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_next(self, status: int, code: str = "error", message: str = "scripted failure", headers: dict | None = None, times: int = 1, after: int = 0) -> None:
        """Answer the next `times` requests with an error in OpenAI's shape, once `after`
        requests more have been answered as usual."""
        body = {"error": {"message": message, "type": code, "code": code, "param": None}}
        self.faults.extend([None] * after + [(status, body, headers or {})] * times)

    def slow_next(self, seconds: float, times: int = 1) -> None:
        """Embed (and so bill) the next `times` requests, but answer each `seconds` late."""
        self.delays.extend([seconds] * times)

    def answer(self, body: dict) -> tuple[int, dict, dict]:
        """The status, JSON body and headers for one embeddings request."""
        time.sleep(self.trip)
        with self._lock:
            self.requests += 1
            self.first_request_at = self.first_request_at or time.monotonic()
            fault = self.faults.popleft() if self.faults else None
            if fault is not None:
                return fault
            if self.quota_requests is not None:  # checked and spent at once: concurrent requests race here
                if self.quota_requests <= 0:
                    body = {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"}}
                    return 429, body, {}
                self.quota_requests -= 1
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        problem = self._problem(body.get("model"), texts)
        if problem:
            return problem
        tokens = sum(count_tokens(t) for t in texts)
        with self._lock:
            limited = self._admit(tokens)
            if limited:
                return limited
            headers = self._current_headers()  # as of the charge, as a server's limiter writes them
            self.calls.update(texts)
            self.admitted_inputs.append(texts)
            self.tokens_served += tokens
            extra = self.delays.popleft() if self.delays else 0.0
            delay = self.latency + self.latency_per_1k_tokens * tokens / 1000 + extra
        time.sleep(delay)
        status, payload = self.embed_body(body)
        with self._lock:
            corrupt = self.corruptions.popleft() if self.corruptions else None
        return status, corrupt(payload) if corrupt else payload, headers

    def embed_body(self, body: dict) -> tuple[int, dict]:
        """The embeddings answer for one request body, limits aside: shared with the Batch API."""
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        problem = self._problem(body.get("model"), texts)
        if problem:
            return problem[0], problem[1]
        dims = body.get("dimensions") or self.dimensions
        items = [{"object": "embedding", "index": i, "embedding": self._encode(fake_vector(t, dims), body)} for i, t in enumerate(texts)]
        if self.shuffle:
            random.shuffle(items)
        tokens = sum(count_tokens(t) for t in texts)
        return 200, {"object": "list", "data": items, "model": body["model"], "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    def _admit(self, tokens: int) -> tuple[int, dict, dict] | None:
        """Charge the budgets for one request, or the 429 the API answers when one is short."""
        needs = {"requests": 1, "tokens": tokens}
        for budget in self.budgets.values():
            budget.refill()
        short = {name: b.seconds_until(needs[name]) for name, b in self.budgets.items() if not b.admits(needs[name])}
        if short:
            self.rate_limited += 1
            name, wait = max(short.items(), key=lambda item: item[1])
            self.refusals.append((time.monotonic(), name, self.budgets[name].level, needs[name]))
            message = f"Rate limit reached on {name} per min. Please try again in {wait * 1000:.0f}ms."
            body = {"error": {"message": message, "type": name, "param": None, "code": "rate_limit_exceeded"}}
            return 429, body, {**self._current_headers(), "retry-after-ms": str(int(wait * 1000) + 1)}
        for name, budget in self.budgets.items():
            budget.charge(needs[name])
        now = time.monotonic()
        self.admitted.append(now)
        self.admissions.append((now, tokens))
        return None

    def set_limits(self, rpm: float | None = None, tpm: float | None = None) -> None:
        """Enforce new per-minute limits from now on (None: unchanged), as a server whose limits
        drop mid-run; a limit not set before starts full."""
        with self._lock:
            for name, limit in (("requests", rpm), ("tokens", tpm)):
                if limit is None:
                    continue
                if name in self.budgets:
                    self.budgets[name].set_limit(limit)
                else:
                    self.budgets[name] = Budget(limit, self.window, self.window_kind)

    def _current_headers(self) -> dict:
        """The x-ratelimit-* headers of the budgets' levels now; the caller holds the lock."""
        if self.limit_headers == "none":
            return {}
        for budget in self.budgets.values():
            budget.refill()
        headers = {key: value for name, b in self.budgets.items() for key, value in b.headers(name).items()}
        if self.limit_headers == "remaining":
            return {key: value for key, value in headers.items() if key.startswith("x-ratelimit-remaining-")}
        return headers

    def _problem(self, model: str | None, texts: list) -> tuple[int, dict, dict] | None:
        status, message = self._check(model, texts) or (None, None)
        if status is None:
            return None
        with self._lock:
            self.rejected.append(message)
        return status, {"error": {"message": message, "type": "invalid_request_error", "code": None}}, {}

    def _check(self, model: str | None, texts: list) -> tuple[int, str] | None:
        if model not in self.models:
            return 404, f"The model `{model}` does not exist"
        if not texts or len(texts) > MAX_INPUTS:
            return 400, f"'input' must hold 1 to {MAX_INPUTS} items, got {len(texts or [])}"
        counts = [count_tokens(t) if isinstance(t, str) else -1 for t in texts]
        if any(not t for t in texts) or -1 in counts:
            return 400, "'input' items must be non-empty strings"
        if max(counts) > MAX_INPUT_TOKENS:
            return 400, f"This model's maximum context length is {MAX_INPUT_TOKENS} tokens, an input has {max(counts)}"
        if sum(counts) > MAX_REQUEST_TOKENS:
            return 400, f"Requested {sum(counts)} tokens, max {MAX_REQUEST_TOKENS} tokens per request"
        return None

    @staticmethod
    def _encode(vector: np.ndarray, body: dict):
        if body.get("encoding_format") == "base64":
            return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
        return vector.tolist()

    def _route(self, method: str, path: str, headers, raw: bytes) -> tuple[int, object, dict]:
        with self._lock:
            self.authorizations[headers.get("authorization", "")] += 1
            self.seen.append((method, path, {name.lower(): value for name, value in headers.items()}))
        url = urlsplit(path)
        parts = url.path.strip("/").split("/")
        if method == "POST" and len(parts) == 4 and parts[:2] == ["openai", "deployments"] and parts[3] == "embeddings":
            return self._azure_answer(parts[2], parse_qs(url.query), json.loads(raw or b"{}"))
        if method == "POST" and url.path.rstrip("/").endswith("/embeddings"):
            return self.answer(json.loads(raw or b"{}"))
        return self.batch_api.handle(method, path, headers, raw)

    def _batch_line_body(self, body: dict) -> tuple[int, dict]:
        """A batch request: Azure's name a deployment as their model."""
        return self.embed_body({**body, "model": self.deployments.get(body.get("model"), body.get("model"))})

    def _azure_answer(self, deployment: str, query: dict, body: dict) -> tuple[int, object, dict]:
        """Azure's embeddings route: the deployment names the model (the body's `model` is ignored,
        as Azure does); no api-version is a 404, as an unknown deployment is."""
        if not query.get("api-version"):
            return 404, {"error": {"code": "404", "message": "Resource not found"}}, {}
        if deployment not in self.deployments:
            message = "The API deployment for this resource does not exist."
            return 404, {"error": {"code": "DeploymentNotFound", "message": message}}, {}
        return self.answer({**body, "model": self.deployments[deployment]})

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str):
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                status, payload, headers = fake._route(method, self.path, self.headers, raw)
                if status == 200 and "/embeddings" in self.path:
                    texts = json.loads(raw or b"{}").get("input")
                    with fake._lock:
                        fake.peers[self.client_address[0]] += 1
                        fake.answered.append((time.monotonic(), self.client_address[0], texts))
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/octet-stream" if isinstance(payload, bytes) else "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                self._serve("POST")

            def do_GET(self):
                self._serve("GET")

            def log_message(self, *args):
                pass

        return Handler
