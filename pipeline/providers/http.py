"""The base of every provider that sends requests over HTTP, written once: the rate limiter,
retries, the failure rules and the checking of answers.

A provider implements `_send` (one request) and says what went wrong in this module's terms:
`Transient` (retried with backoff), `RateLimited` (a 429: the limiter learns from it, every
request waits, then it is retried), `Rejected` (a 400: the request is split, never resent whole)
or `Fatal` (no retry can fix it: every request of the run stops, those waiting included).
Every attempt passes the rate limiter and is counted here; a client's own retries stay off.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pipeline.config import EmbeddingConfig
from pipeline.errors import ProviderError, ResponseError
from pipeline.providers.base import Embedder
from pipeline.providers.limits.rate_limiter import FIRST_REQUEST_TOKENS, RateLimiter, Stopped
from pipeline.text.tokens import encode_arrays

log = logging.getLogger("embedpipe")


class Transient(Exception):
    """A failure a retry may fix: a timeout, a lost connection, a 5xx. `cause` names it in the
    run's counts; "timeout" also counts the attempt's tokens as possibly billed twice."""

    def __init__(self, cause: str, detail: str, retry_after: float | None = None):
        super().__init__(detail)
        self.cause, self.retry_after = cause, retry_after


class RateLimited(Exception):
    """A 429 for the rate limit (not for an empty quota, which is `Fatal`)."""

    def __init__(self, headers: Mapping[str, str], retry_after: float | None = None):
        super().__init__("HTTP 429 rate limited")
        self.headers, self.retry_after = headers, retry_after


class Rejected(Exception):
    """A 400: the input or the request is too large or malformed; `message` is the server's."""


class Fatal(ProviderError):
    """An answer no retry can fix (a refused key, an empty quota): every request stops."""


@dataclass
class Answer:
    """One request's answer: a vector per good item and, for each unusable one, why."""

    headers: Mapping[str, str]
    vectors: np.ndarray
    bad: dict[int, str]
    usage_tokens: int | None = None  # what the server says it counted


class HTTPEmbedder(Embedder):
    """A metered provider behind an HTTP API, within the server's rate limits."""

    rate_limited: ClassVar[bool] = True

    def __init__(self, config: EmbeddingConfig, api_key: str | None):
        self.check_config(config)  # before any client exists: no request can leave first
        super().__init__(config)
        self._outgoing = threading.local()  # this thread's request: its tokens, then when it left
        self.limiter = RateLimiter(config.requests_per_minute, config.tokens_per_minute, first_answer_first=True)
        self._fatal: ProviderError | None = None  # the answer that stopped every request
        self._first_written = threading.Event()

    def _send(self, texts: list[str], dimensions: int | None) -> Answer:
        """Send one request for `texts` through a client whose hooks are `request_hooks()`;
        raise `Transient`, `RateLimited`, `Rejected` or `Fatal` for what went wrong.
        `dimensions` is None while the model's size is being asked."""
        raise NotImplementedError

    def request_hooks(self) -> dict[str, list[Any]]:
        """httpx event hooks for the provider's client: the rate limiter's budget is taken as
        each request is built and about to be sent (the server charges on arrival)."""
        return {"request": [self._take_budget]}

    @property
    def batch_tokens(self) -> int:
        """Tokens per request: what the rate limiter says the server's budget takes in one step."""
        return min(self.max_batch_tokens, self.limiter.request_tokens() or self.max_batch_tokens)

    @property
    def planned_batch_tokens(self) -> tuple[int, int]:
        later = self.limiter.later_request_tokens() or self.max_batch_tokens
        return min(self.max_batch_tokens, FIRST_REQUEST_TOKENS), min(self.max_batch_tokens, later)

    def _wait_to_size_request(self) -> None:
        self.limiter.wait_for_first_answer()  # the first request is small; the others are sized by its answer

    def _nothing_to_send(self) -> None:
        self.limiter.pass_first_request()

    def wait_for_first_request(self, timeout: float) -> None:
        self._first_written.wait(timeout)

    @property
    def held_back(self) -> dict[str, tuple[float, float]]:
        return dict(self.limiter.held_back)

    def share_limits(self, fraction: float, refill_delay: float = 0.0) -> None:
        if refill_delay:
            self.limiter.delay_refill(refill_delay)
        self.limiter.set_share(fraction)

    def wants_budget(self, within: float) -> bool:
        return self.limiter.wanted_within(within)

    @property
    def stopped(self) -> bool:
        return self.limiter.stopped

    def embed_batch(self, texts: list[str], token_counts: list[int] | None = None) -> np.ndarray:
        """One request, retried on transient failures; a rejected batch is split, never resent whole."""
        counts = token_counts if token_counts is not None else [len(t) for t in encode_arrays(texts)]
        try:
            return self._with_retries(texts, counts)
        except Rejected as exc:
            if len(texts) == 1:
                raise ProviderError(f"the server rejected a text of {len(texts[0])} characters: {exc}") from None
            self.tally("split after 400")
            half = len(texts) // 2
            return np.concatenate(
                [self.embed_batch(texts[:half], counts[:half]), self.embed_batch(texts[half:], counts[half:])]
            )

    def _with_retries(self, texts: list[str], counts: list[int], probing: bool = False) -> np.ndarray:
        try:
            return self._until_all_good(texts, counts, probing)
        finally:
            self.limiter.settled()  # however it ended, no request waits for this one's answer any longer

    def _until_all_good(self, texts: list[str], counts: list[int], probing: bool = False) -> np.ndarray:
        """Retry until every text has a good vector. Items an answer got wrong are asked for
        again; the good ones are kept, so no text is paid for twice except where its own answer
        was unusable or the attempt timed out. `probing`: the first good vector sets the size."""
        dimensions: int | None = None if probing else self.dimensions
        out: np.ndarray | None = None if probing else np.empty((len(texts), self.dimensions), dtype=np.float32)
        pending: list[int] = list(range(len(texts)))
        last: Exception | None = None
        for attempt in range(self.config.max_attempts):
            self._raise_if_stopped()
            tokens = sum(counts[i] for i in pending)
            try:
                answer = self._request([texts[i] for i in pending], tokens, dimensions)
            except Stopped:  # the request hook refused to send it
                self._raise_if_stopped()
                raise
            except (Transient, ResponseError) as exc:
                self._raise_if_stopped()  # the request hook refused to send it: not a connection error
                last = exc
                self._wait_to_retry(exc, tokens, attempt, len(pending))
                continue
            except Fatal as fatal:
                raise self._stop_all(fatal) from None
            except Rejected:
                self.limiter.settled()
                raise
            except RateLimited as exc:
                last = exc
                self._wait_after_429(exc, tokens, attempt)
                continue
            good = [k for k in range(len(pending)) if k not in answer.bad]
            if good and out is None:  # the probe's first good answer
                dimensions = answer.vectors.shape[1]
                out = np.empty((len(texts), dimensions), dtype=np.float32)
            if good and out is not None:
                out[[pending[k] for k in good]] = answer.vectors[good]
            pending = [pending[k] for k in sorted(answer.bad)]
            if not pending and out is not None:
                return out
            first_problem = answer.bad[next(iter(answer.bad))]
            last = ResponseError(f"{len(answer.bad)} of {len(good) + len(answer.bad)} items unusable: {first_problem}")
            self.tally("bad response")
        raise ProviderError(f"{self.config.max_attempts} attempts at {len(texts)} texts failed; last: {last}")

    def _wait_to_retry(self, exc: Exception, tokens: int, attempt: int, texts: int) -> None:
        cause = exc.cause if isinstance(exc, Transient) else "bad response"
        self.tally(cause, timed_out_tokens=tokens if cause == "timeout" else 0)
        self.limiter.settled()
        wait = (exc.retry_after if isinstance(exc, Transient) else None) or backoff(attempt)
        attempts = self.config.max_attempts
        log.warning("%s; retrying %d texts in %.1f s (attempt %d of %d)", exc, texts, wait, attempt + 1, attempts)
        self.limiter.sleep(wait)

    def _wait_after_429(self, exc: RateLimited, tokens: int, attempt: int) -> None:
        self.tally("429")
        self.limiter.refused(exc.headers, tokens, getattr(self._outgoing, "ticket", None), exc.retry_after)
        wait = exc.retry_after or backoff(attempt)
        log.info("rate limited (429): all requests wait %.1f s", wait)
        self.limiter.back_off(wait, tokens, exc.headers)

    def _stop_all(self, fatal: ProviderError) -> ProviderError:
        """Stop this embedder's other requests, those waiting for budget or a retry included:
        each raises `fatal`'s message instead of sending."""
        self._fatal = self._fatal or fatal
        self.limiter.stop()
        return fatal

    def stop(self, reason: str) -> None:
        """As `Embedder.stop`; requests waiting for budget or a retry end now too."""
        super().stop(reason)
        self.limiter.stop()

    def _raise_if_stopped(self) -> None:
        if self.limiter.stopped:
            reason = self._fatal or self.stop_reason or "stopped: the run was closed while this request waited"
            raise ProviderError(str(reason))

    def _request(self, texts: list[str], tokens: int, dimensions: int | None) -> Answer:
        self._outgoing.tokens, self._outgoing.ticket = tokens, None
        self.tally()
        self.limiter.request_started()
        answered = False  # an answer the limiter reads follows: `observe`, or `refused` for a 429
        try:
            answer = self._send(texts, dimensions)
            answered = True
        except RateLimited:
            answered = True
            raise
        finally:
            self.limiter.request_ended(self._outgoing.ticket, answer_follows=answered)
        self.limiter.observe(answer.headers, tokens, answer.usage_tokens, self._outgoing.ticket)
        return answer

    def _take_budget(self, request: Any) -> None:
        """httpx calls this when a request is built and about to be sent. The budget is taken
        here, not before the client built it (milliseconds, more while other threads hold the
        interpreter). The trace tells the limiter when the request is written, after any new
        connection and TLS handshake: a bucket spent from full starts refilling then, as the
        server's does."""
        tokens, self._outgoing.tokens = getattr(self._outgoing, "tokens", None), None  # a redirect pays nothing more
        if tokens is not None:
            self._outgoing.ticket = self.limiter.acquire(tokens)
        request.extensions["trace"] = self._trace

    def _trace(self, event: str, info: dict) -> None:
        """httpcore's `trace` extension: called at each step of sending a request."""
        if event.endswith("send_request_body.complete"):
            self.limiter.sent()
            self._first_written.set()

    def close(self) -> None:
        self.limiter.stop()  # requests still waiting (after a failure elsewhere, or Ctrl-C) end now
        super().close()


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """The server's `retry-after-ms` or `retry-after`, in seconds (at most 60), when it sent one."""
    for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return min(float(headers[header]) * scale, 60.0)  # type: ignore[index]  # None is caught
        except (KeyError, TypeError, ValueError):
            pass
    return None


def backoff(attempt: int) -> float:
    """Exponential backoff with full jitter: 0..0.5 s, 0..1 s, 0..2 s ... capped at 30 s."""
    return random.uniform(0, min(0.5 * 2**attempt, 30.0))
