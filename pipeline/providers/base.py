"""The one interface every provider implements, and the batching written once for all of them."""

from __future__ import annotations

import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from pipeline.config import EmbeddingConfig
from pipeline.errors import ProviderError, ResponseError
from pipeline.providers.packing import Cursor, pack_batches
from pipeline.run.counts import RunStats
from pipeline.unit_vectors import l2_normalise

if TYPE_CHECKING:  # the cache imports this module
    from pipeline.cache.vectors import VectorCache

_live: weakref.WeakSet = weakref.WeakSet()  # every embedder not yet closed, for `stop_every_embedder`
MAX_CONCURRENCY = 32  # threads sending requests when embedding.max_concurrency is unset


class Embedder(ABC):
    """Turns texts into L2-normalised float32 vectors.

    Subclasses implement `embed_batch` (one request) and `dimensions`; `embed` packs any
    number of texts into requests within the provider's limits.
    """

    # What a provider can do, stated here and read by the rest of the pipeline: no module
    # outside providers/ asks for a provider by its name.
    provider: ClassVar[str]  # its name in the registry
    max_batch_inputs: ClassVar[int] = 2048  # texts in one request
    max_batch_tokens: ClassVar[int] = 300_000  # tokens in one request
    max_input_tokens: int = 8192  # tokens in one text (a local model sets its own)
    uses_batch_api: ClassVar[bool] = False  # True: `run_batches` fills the cache before the run
    rate_limited: ClassVar[bool] = False  # its server enforces rate limits (requests_per_minute, ...)
    price_kind: ClassVar[str | None] = "sync"  # the price table's column it is billed at; None: free
    accepts_dimensions: ClassVar[bool] = False  # it sends embedding.dimensions to the model
    query_provider: ClassVar[str | None] = None  # the provider one query goes through; None: this one
    batch_provider: ClassVar[str | None] = None  # the provider of its batch API, where it has one
    tokenizer: ClassVar[str] = "cl100k_base"  # what chunks and token counts are measured in
    sample_size: ClassVar[int] = 0  # the run's first texts `choose` wants, where `needs_sample`

    def __init__(self, config: EmbeddingConfig, api_key: str | None = None):  # built as cls(config, api_key)
        self.config = config
        self.model = config.model
        self.max_concurrency = config.max_concurrency or MAX_CONCURRENCY
        if self.tokenizer != "cl100k_base":  # chunks, requests and budgets are all counted in it
            raise ProviderError(
                f"provider {self.provider} counts tokens in {self.tokenizer}; embedpipe has cl100k_base"
            )
        self.sent = RunStats()  # requests, retries by cause, 429s; other processes' merged in
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None  # see `_request_pool`
        self.stop_reason: str | None = None  # set by `stop`: no request leaves after it
        self._in_flight = 0  # requests between leaving and their answer being stored
        self._idle = threading.Condition(self._lock)
        _live.add(self)

    @classmethod
    def check_config(cls, config: EmbeddingConfig) -> None:
        """Refuse settings this provider cannot run with, before anything starts (no call is made)."""

    def batch_lines(self, action: str, batch_id: str = "") -> list[str]:
        """A provider with `uses_batch_api`: `list`, `status ID` or `cancel ID` of its batch
        jobs, as lines to print (`embedpipe batches`)."""
        raise NotImplementedError(f"{self.provider} has no batch API")

    @classmethod
    def native_dimensions(cls, model: str) -> int | None:
        """The size `model` answers with when no `dimensions` is sent; None where unknown."""
        return None

    @classmethod
    def matryoshka(cls, model: str) -> bool:
        """Whether `model` was trained so that its first dimensions are a good vector on their own
        (Matryoshka): only then may `output.dimensions_truncate` cut its vectors."""
        return False

    @classmethod
    def endpoint(cls, config: EmbeddingConfig) -> str | None:
        """Where requests go, as far as it shapes the vectors (None: nowhere, a local model)."""
        return None

    @classmethod
    def shaping_settings(cls, config: EmbeddingConfig) -> dict:
        """Settings beyond provider, model and dimensions that change the vectors (a local backend):
        an output made under others is not reused."""
        return {}

    def share_limits(self, fraction: float, refill_delay: float = 0.0) -> None:
        """Spend only `fraction` of the rate limits: other processes share the key. A worker
        process's budget starts refilling `refill_delay` s late (its requests reach the server late).
        Called again mid-run, it follows a share that changed without losing what was spent."""

    def wants_budget(self, within: float) -> bool:
        """Whether a request asked for rate-limit budget, or waited for it, in the last `within` s."""
        return False

    @property
    def stopped(self) -> bool:
        """Whether `stop` was called: no request leaves any more."""
        return self.stop_reason is not None

    def tally(self, retry_cause: str | None = None, timed_out_tokens: int = 0) -> None:
        """Count one request sent, or one retry for `retry_cause` (with the tokens of an attempt
        that timed out); safe from worker threads."""
        with self._lock:
            if retry_cause:
                self.sent.retries[retry_cause] = self.sent.retries.get(retry_cause, 0) + 1
                self.sent.rate_limited += retry_cause.endswith("429")
                self.sent.timed_out_tokens += timed_out_tokens
            else:
                self.sent.requests += 1

    def count_elsewhere(self, counts: RunStats) -> None:
        """Add what a copy of this embedder in another process (a cluster worker) sent."""
        with self._lock:
            self.sent.merge(counts)

    @property
    def requests(self) -> int:
        """Requests sent, counting every retry."""
        return self.sent.requests

    @property
    @abstractmethod
    def dimensions(self) -> int:
        """Length of every vector this embedder returns."""

    @abstractmethod
    def embed_batch(self, texts: list[str], token_counts: list[int] | None = None) -> np.ndarray:
        """Embed one request's worth of texts; returns shape (len(texts), dimensions).
        `token_counts`, when the caller has them, spare a metered provider counting again."""

    def run_batches(self, misses: Iterable[tuple[str, int]], cache: VectorCache) -> dict:
        """A provider with `uses_batch_api`: embed every (text, tokens) of `misses` through its
        batch API into `cache` before the run writes its output; returns what it did, counted."""
        raise NotImplementedError(f"{self.provider} has no batch API")

    @property
    def needs_sample(self) -> bool:
        """Whether `choose` waits for the run's first texts before the vectors' namespace is known
        (a local model with `embedding.backend: auto` and no remembered choice)."""
        return False

    def choose(self, sample: list[str]) -> None:
        """Make the choices that depend on the input, from `sample`, the first texts of the run."""

    @property
    def made_with(self) -> dict:
        """How the vectors are made beyond provider and model (a local backend, and why), for the
        output's metadata and the run summary."""
        return {}

    @property
    def knows_dimensions(self) -> bool:
        """Whether `dimensions` is known without asking the model (a paid call)."""
        return True

    @property
    def cache_namespace(self) -> str:
        """What produced a vector: vectors from different namespaces never mix in the cache."""
        return f"{self.provider}:{self.model}:{self.dimensions}"

    def embed(self, texts: list[str], token_counts: list[int]) -> np.ndarray:
        """Embed any number of texts, in order, as L2-normalised float32 rows."""
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        for batch, vectors in self.embed_iter(texts, token_counts):
            out[batch] = vectors
        return out

    def embed_iter(
        self, texts: list[str], token_counts: list[int], store: Callable[[list[str], np.ndarray], None] | None = None
    ) -> Iterator[tuple[slice, np.ndarray]]:
        """Send up to `max_concurrency` requests at once; yield (slice of texts, vectors) as each
        completes. Each request takes the next texts when its thread picks it up, as many as
        `batch_tokens` says then (the budget may have changed since the call). `store(texts,
        vectors)` runs in the worker the moment an answer is checked, so a run killed later pays
        again for at most the requests then in flight. On the first failure, requests not yet
        sent are cancelled, those already answered are still yielded, and then the failure is raised."""
        cursor = Cursor(token_counts)

        def work() -> tuple[slice, np.ndarray] | None:
            with self._sending():
                self._wait_to_size_request()
                batch = cursor.take(self.batch_inputs, self.batch_tokens)
                if batch is None:
                    self._nothing_to_send()
                    return None
                vectors = self._checked(texts[batch], token_counts[batch])
                if store is not None:
                    try:
                        store(texts[batch], vectors)
                    except BaseException as exc:  # answers that cannot be kept must not go on being bought
                        self.stop(f"stopped: storing vectors failed: {exc}")
                        raise
                return batch, vectors

        # Every request of this call is queued now, behind those of calls before it and ahead of
        # those after: a record batch's last requests are not overtaken by the next batch's.
        pool, failure = self._request_pool(), None
        futures: set[Future] = set()
        try:
            while failure is None and cursor.left:
                batches = pack_batches(cursor.left_counts(), self.batch_inputs, self.batch_tokens)
                futures |= {pool.submit(work) for _ in batches}  # each takes its texts when it runs
                while futures:  # after a failure, also waits for those running
                    done = wait(futures, return_when=FIRST_COMPLETED).done
                    futures -= done
                    for future in done:
                        if future.cancelled():
                            continue
                        if future.exception() is not None:
                            failure = failure or future.exception()
                            for pending in futures:
                                pending.cancel()
                        elif future.result() is not None:
                            yield future.result()
        finally:
            for pending in futures:  # on Ctrl-C, or a consumer that stopped early: unsent requests never leave
                pending.cancel()
        if failure is not None:
            raise failure

    def _wait_to_size_request(self) -> None:
        """Return when the next request's size can be chosen (a metered provider first waits for
        the answer that tells its limits)."""

    def expect_requests(self) -> None:
        """A hint that requests will follow soon: start in the background what they need (a
        client, its connections). Nothing where nothing needs starting."""

    def wait_for_first_request(self, timeout: float) -> None:
        """Return once this embedder's first request is on the wire, or after `timeout` seconds
        (a local model sends none: at once)."""

    def _nothing_to_send(self) -> None:
        """A request found no texts left to take."""

    def stop(self, reason: str) -> None:
        """From now on no request of this embedder leaves: those queued or waiting fail with
        `reason`; those already on the wire finish, and their answers are stored."""
        with self._lock:
            self.stop_reason = self.stop_reason or reason

    @contextmanager
    def _sending(self) -> Iterator[None]:
        """One request's life, from leaving to its answer stored; refused once stopped."""
        with self._lock:
            if self.stop_reason:
                raise ProviderError(self.stop_reason)
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
                self._idle.notify_all()

    def wait_idle(self, deadline: float) -> int:
        """Wait until no request is in flight or `time.monotonic()` passes `deadline`;
        returns the requests still in flight."""
        with self._lock:
            while self._in_flight and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(left)
            return self._in_flight

    def _request_pool(self) -> ThreadPoolExecutor:
        """The threads every request of this embedder is sent from, `max_concurrency` of them,
        shared by all calls: requests leave in the order they were submitted, so a batch's
        last requests are not overtaken by the next batch's, and the limit holds across
        partitions sharing this embedder."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=max(1, self.max_concurrency), thread_name_prefix="embed")
            return self._pool

    def _checked(self, texts: list[str], token_counts: list[int]) -> np.ndarray:
        vectors = self.embed_batch(texts, token_counts)
        check_vectors(vectors, len(texts), self.dimensions)
        return l2_normalise(vectors)

    @property
    def batch_inputs(self) -> int:
        """Texts per request: `embedding.batch_size` if set, within the provider's maximum."""
        return min(self.config.batch_size or self.max_batch_inputs, self.max_batch_inputs)

    @property
    def batch_tokens(self) -> int:
        """Tokens per request."""
        return self.max_batch_tokens

    @property
    def planned_batch_tokens(self) -> tuple[int, int]:
        """Tokens in a run's first request and in the others, as far as known before it starts
        (what `embedpipe estimate` counts requests by)."""
        return self.batch_tokens, self.batch_tokens

    @property
    def held_back(self) -> dict[str, tuple[float, float]]:
        """Budgets a configured cap holds below what the server allows: name -> (cap, server's)."""
        return {}

    def close(self) -> None:
        """Release clients, models and threads; subclasses call this last."""
        with self._lock:
            pool, self._pool = self._pool, None
        _live.discard(self)
        if pool is not None:  # not cancel_futures: a call waiting on a request the pool cancelled would wait forever;
            pool.shutdown(wait=False)  # queued requests still run, and a stopped provider refuses each at once


def stop_every_embedder(reason: str) -> None:
    """Stop every embedder of this process (see `Embedder.stop`): a user's Ctrl-C."""
    for embedder in list(_live):
        embedder.stop(reason)


def wait_for_requests(seconds: float) -> int:
    """Wait up to `seconds` for the requests on the wire to be answered and stored; returns
    how many were still in flight then."""
    deadline = time.monotonic() + seconds
    return sum(embedder.wait_idle(deadline) for embedder in list(_live))


def check_vectors(vectors: np.ndarray, count: int, dimensions: int) -> None:
    """Raise ResponseError unless `vectors` is (count, dimensions), finite and non-zero."""
    if vectors.shape != (count, dimensions):
        raise ResponseError(f"expected {count} vectors of {dimensions} dimensions, got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise ResponseError("response holds non-finite values (NaN or infinity)")
    if count and not np.linalg.norm(vectors, axis=1).all():
        raise ResponseError("response holds an all-zero vector")
