"""OpenAI's embeddings endpoint, or any server that speaks its protocol (`embedding.base_url`).

The client's own retries are off: every attempt passes the rate limiter and is counted here.
An answer no retry can fix (a refused key, an empty quota) stops every request of the run,
including those waiting for budget: none leaves after it. A malformed answer, whatever is wrong
with it, is retried for the items it got wrong, never a traceback. The default key variable,
OPENAI_API_KEY, is only ever sent to OpenAI's own host.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import re
import threading

import httpx2
import numpy as np
import openai

from pipeline.config import EmbeddingConfig
from pipeline.errors import ConfigError, ProviderError, ResponseError
from pipeline.providers.base import Embedder
from pipeline.providers.openai_answers import decode_response, json_object, prompt_tokens
from pipeline.providers.transport import BackgroundTransport
from pipeline.ratelimit import FIRST_REQUEST_TOKENS, RateLimiter, Stopped
from pipeline.tokens import encode_arrays

log = logging.getLogger("embedpipe")
KNOWN_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
_FATAL = {  # our words, not the server's: a 401's message quotes part of the key
    401: "the API key was refused (401): check the key in {env}",
    403: "access denied (403): the key in {env} may not use model {model}",
    404: "model {model} was not found (404): check embedding.model and embedding.base_url",
}
_QUOTA = "the account's quota is used up (429 insufficient_quota): add credit or raise the limit"
_RETRYABLE: dict[type[Exception], str] = {
    openai.APITimeoutError: "timeout",  # before APIConnectionError, its parent
    openai.APIConnectionError: "connection",
    openai.InternalServerError: "server error",
    ResponseError: "bad response",
}


class OpenAIEmbedder(Embedder):
    """Embeddings through the official `openai` client, within the configured rate limits."""

    provider = "openai"
    max_batch_inputs = 2048
    max_batch_tokens = 300_000
    max_input_tokens = 8192

    def __init__(self, config: EmbeddingConfig, api_key: str | None):
        self.check_config(config)  # before the client exists: no request can leave first
        super().__init__(config)
        if not api_key and not config.base_url:
            raise ProviderError(
                f"no API key: set the environment variable {config.api_key_env} "
                "(or embedding.api_key_block to a Prefect Secret block)"
            )
        self._outgoing = threading.local()  # this thread's request: its tokens, then when it left
        self._transport = BackgroundTransport()
        self.client = openai.OpenAI(
            api_key=api_key or "unused",
            base_url=config.base_url,  # None: OPENAI_BASE_URL or api.openai.com
            max_retries=0,
            timeout=config.request_timeout_seconds,
            http_client=openai.DefaultHttpxClient(
                transport=self._transport, event_hooks={"request": [self._take_budget]}
            ),
        )
        self._transport.prepare(self.client.base_url.scheme)
        self.limiter = RateLimiter(config.requests_per_minute, config.tokens_per_minute, first_answer_first=True)
        self._fatal: ProviderError | None = None  # the answer that stopped every request

    @classmethod
    def check_config(cls, config: EmbeddingConfig) -> None:
        check_key_destination(config)

    @functools.cached_property
    def dimensions(self) -> int:
        if self.config.dimensions:
            return self.config.dimensions
        if self.model in KNOWN_DIMENSIONS:
            return KNOWN_DIMENSIONS[self.model]
        try:  # an unknown model tells us by answering, retried as any request is
            return self._with_retries(["dimension probe"], [2], probing=True).shape[1]
        except openai.BadRequestError as exc:
            problem = _describe(exc)
        except ProviderError as exc:
            if self._fatal or self.limiter.stopped:
                raise
            problem = str(exc)
        raise ProviderError(f"model {self.model}: asking its dimensions failed ({problem}); set embedding.dimensions")

    @property
    def knows_dimensions(self) -> bool:
        return bool(self.config.dimensions or self.model in KNOWN_DIMENSIONS)

    @property
    def cache_namespace(self) -> str:
        return f"openai:{str(self.client.base_url).rstrip('/')}:{self.model}:{self.dimensions}"

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

    @property
    def held_back(self) -> dict[str, tuple[float, float]]:
        return dict(self.limiter.held_back)

    def embed_batch(self, texts: list[str], token_counts: list[int] | None = None) -> np.ndarray:
        """One request, retried on transient failures; a rejected batch is split, never resent whole."""
        counts = token_counts if token_counts is not None else [len(t) for t in encode_arrays(texts)]
        try:
            return self._with_retries(texts, counts)
        except openai.BadRequestError as exc:
            if len(texts) == 1:
                raise ProviderError(
                    f"the server rejected a text of {len(texts[0])} characters: {_message(exc)}"
                ) from None
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
        """Retry until every text has a good vector. Items a response got wrong (missing, repeated,
        not base64, wrong length, non-finite) are asked for again; the good ones are kept, so no
        text is paid for twice except where its own answer was unusable or the attempt timed out.
        `probing`: the dimensions are not known yet, and the first good vector sets them."""
        dimensions: int | None = None if probing else self.dimensions
        out: np.ndarray | None = None if probing else np.empty((len(texts), self.dimensions), dtype=np.float32)
        pending, last = list(range(len(texts))), None
        for attempt in range(self.config.max_attempts):
            self._raise_if_stopped()
            tokens = sum(counts[i] for i in pending)
            try:
                vectors, bad = self._request([texts[i] for i in pending], tokens, dimensions)
            except Stopped:  # the request hook refused to send it
                self._raise_if_stopped()
                raise
            except tuple(_RETRYABLE) as exc:
                self._raise_if_stopped()  # the request hook refused to send it: not a connection error
                last = exc
                self._note_transient(exc, tokens)
                self.limiter.settled()
                wait = _retry_after(exc) or _backoff(attempt)
                log.warning(
                    "%s; retrying %d texts in %.1f s (attempt %d of %d)",
                    _describe(exc),
                    len(pending),
                    wait,
                    attempt + 1,
                    self.config.max_attempts,
                )
                self.limiter.sleep(wait)
                continue
            except openai.APIStatusError as exc:
                fatal = fatal_error(exc, self.config.api_key_env, self.model)
                if fatal:
                    raise self._stop_all(fatal) from None
                if isinstance(exc, openai.BadRequestError):
                    self.limiter.settled()
                    raise
                last = exc  # what is left: 429 rate_limit_exceeded
                self.tally("429")
                self.limiter.refused(exc.response.headers, tokens, getattr(self._outgoing, "ticket", None))
                wait = _retry_after(exc) or _backoff(attempt)
                log.info("rate limited (429): all requests wait %.1f s", wait)
                self.limiter.back_off(wait, tokens)
                continue
            good = [k for k in range(len(pending)) if k not in bad]
            if good and out is None:  # the probe's first good answer
                dimensions = vectors.shape[1]
                out = np.empty((len(texts), dimensions), dtype=np.float32)
            if good:
                out[[pending[k] for k in good]] = vectors[good]  # type: ignore[index]  # set above
            pending = [pending[k] for k in sorted(bad)]
            if not pending and out is not None:
                return out
            last = ResponseError(f"{len(bad)} of {len(good) + len(bad)} items unusable: {bad[next(iter(bad))]}")
            self.tally("bad response")
        raise ProviderError(
            f"{self.config.max_attempts} attempts at {len(texts)} texts failed; last: {_describe(last)}"
        )

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

    def _note_transient(self, exc: Exception, tokens: int) -> None:
        cause = next(name for kind, name in _RETRYABLE.items() if isinstance(exc, kind))
        self.tally(cause)
        if cause == "timeout":
            with self._lock:
                self.timed_out_tokens += tokens

    def _request(self, texts: list[str], tokens: int, dimensions: int | None) -> tuple[np.ndarray, dict[int, str]]:
        self._outgoing.tokens, self._outgoing.ticket = tokens, None
        self.tally()
        body: dict[str, object] = {"model": self.model, "input": texts, "encoding_format": "base64"}
        if self.config.dimensions:
            body["dimensions"] = self.config.dimensions
        # client.post, as openai documents for raw access: `embeddings.create` walks every input
        # string to transform it and parses the answer into a model per vector, milliseconds
        # of interpreter time a request (tens on the first) that the other threads wait for
        response = self.client.post("/embeddings", body=body, cast_to=httpx2.Response)
        payload = json_object(response)
        self.limiter.observe(response.headers, tokens, prompt_tokens(payload), self._outgoing.ticket)
        return decode_response(payload.get("data"), len(texts), dimensions)

    def _take_budget(self, request) -> None:
        """httpx calls this when a request is built and about to be sent. The budget is taken
        here, not before the client built it (milliseconds, more while other threads hold the
        interpreter): the server charges on arrival. The trace tells the limiter when the request
        is written, after any new connection and TLS handshake: a bucket spent from full starts
        refilling then, as the server's does."""
        tokens, self._outgoing.tokens = getattr(self._outgoing, "tokens", None), None  # a redirect pays nothing more
        if tokens is not None:
            self._outgoing.ticket = self.limiter.acquire(tokens)
        request.extensions["trace"] = self._trace

    def _trace(self, event: str, info: dict) -> None:
        """httpcore's `trace` extension: called at each step of sending a request."""
        if event.endswith("send_request_body.complete"):
            self.limiter.sent()

    def close(self) -> None:
        self.limiter.stop()  # requests still waiting (after a failure elsewhere, or Ctrl-C) end now
        self.client.close()
        super().close()


def check_key_destination(config: EmbeddingConfig) -> None:
    """Refuse a server other than OpenAI's unless the config names where its key comes from.

    The default variable, OPENAI_API_KEY, holds an OpenAI key: it is sent only to OpenAI's own
    host. Another server gets a key only from `api_key_env` or `api_key_block` given explicitly
    (YAML or --set), even when that is OPENAI_API_KEY again. Raises ConfigError; sends nothing."""
    if "api_key_env" in config.model_fields_set or config.api_key_block:
        return
    url = config.base_url or os.environ.get("OPENAI_BASE_URL")  # where the client will send it
    if not url or is_openai_host(url):
        return
    shown = re.sub(r"//[^/]*@", "//", url).split("?")[0]  # user, password and query may hold a secret
    where = f"embedding.base_url {shown}" if config.base_url else f"OPENAI_BASE_URL {shown} (base_url is null)"
    raise ConfigError(
        f"{where} is not OpenAI's: name the variable holding that server's key in embedding.api_key_env "
        "(the default, OPENAI_API_KEY, is only ever sent to api.openai.com); "
        "for a server that needs no key, name an unset variable"
    )


def is_openai_host(url: str) -> bool:
    """Whether `url` is on OpenAI's own host: api.openai.com or another *.openai.com.
    Azure's *.openai.azure.com is not: it takes an Azure key."""
    try:
        host = httpx2.URL(url).host.lower().rstrip(".")
    except (httpx2.InvalidURL, TypeError, ValueError):
        return False
    return host == "openai.com" or host.endswith(".openai.com")


def fatal_error(exc: Exception, api_key_env: str, model: str) -> ProviderError | None:
    """The one-line error for an answer no retry can fix; None where retrying (429 rate
    limits, 5xx) or splitting (400) may still succeed."""
    if not isinstance(exc, openai.APIStatusError) or isinstance(
        exc, (openai.InternalServerError, openai.BadRequestError)
    ):
        return None
    if isinstance(exc, openai.RateLimitError):
        return ProviderError(_QUOTA) if exc.code == "insufficient_quota" else None
    if exc.status_code in _FATAL:
        return ProviderError(_FATAL[exc.status_code].format(env=api_key_env, model=model))
    return ProviderError(f"the server refused the request: {_describe(exc)}")


def _retry_after(error: Exception) -> float | None:
    """The server's `retry-after-ms` or `retry-after`, in seconds, when it sent one."""
    response = getattr(error, "response", None)
    for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return min(float(response.headers[header]) * scale, 60.0)  # type: ignore[union-attr]  # caught below
        except (AttributeError, KeyError, TypeError, ValueError):
            pass
    return None


def _backoff(attempt: int) -> float:
    """Exponential backoff with full jitter: 0..0.5 s, 0..1 s, 0..2 s ... capped at 30 s."""
    return random.uniform(0, min(0.5 * 2**attempt, 30.0))


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    return str(body.get("message") or exc.status_code)


def _describe(exc: Exception | None) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code} {_message(exc)}"
    return f"{type(exc).__name__}: {exc}"
