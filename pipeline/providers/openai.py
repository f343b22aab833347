"""OpenAI's embeddings endpoint, or any server that speaks its protocol (`embedding.base_url`)."""

from __future__ import annotations

import base64
import functools
import random
import time

import numpy as np
import openai

from pipeline.config import EmbeddingConfig
from pipeline.errors import ProviderError, ResponseError
from pipeline.providers.base import Embedder, check_vectors

KNOWN_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
_FATAL = {
    401: "the API key was refused (401): check the key in ${env}",
    403: "access denied (403): the key in ${env} may not use model {model}",
    404: "model {model} was not found (404): check embedding.model and embedding.base_url",
}


class OpenAIEmbedder(Embedder):
    """Embeddings through the official `openai` client; retries are ours, so each attempt is counted."""

    provider = "openai"
    max_batch_inputs = 2048
    max_batch_tokens = 300_000
    max_input_tokens = 8192

    def __init__(self, config: EmbeddingConfig, api_key: str | None):
        super().__init__(config)
        if not api_key and not config.base_url:
            raise ProviderError(
                f"no API key: set the environment variable {config.api_key_env} "
                "(or embedding.api_key_block to a Prefect Secret block)"
            )
        self.client = openai.OpenAI(
            api_key=api_key or "unused",
            base_url=config.base_url,  # None: OPENAI_BASE_URL or api.openai.com
            max_retries=0,
            timeout=config.request_timeout_seconds,
        )
        self.retries = 0

    @functools.cached_property
    def dimensions(self) -> int:
        if self.config.dimensions:
            return self.config.dimensions
        if self.model in KNOWN_DIMENSIONS:
            return KNOWN_DIMENSIONS[self.model]
        return len(self._request(["dimension probe"])[0])  # an unknown model tells us by answering

    @property
    def cache_namespace(self) -> str:
        return f"openai:{self.client.base_url.host}:{self.model}:{self.dimensions}"

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        """One request, retried on transient failures; a rejected batch is split, never resent whole."""
        try:
            return self._with_retries(texts)
        except openai.BadRequestError as exc:
            if len(texts) == 1:
                raise ProviderError(f"the server rejected a text of {len(texts[0])} characters: {_message(exc)}") from None
            half = len(texts) // 2
            return np.concatenate([self.embed_batch(texts[:half]), self.embed_batch(texts[half:])])

    def _with_retries(self, texts: list[str]) -> np.ndarray:
        last = None
        for attempt in range(self.config.max_attempts):
            if attempt:
                self.retries += 1
                time.sleep(_retry_delay(last, attempt))
            try:
                vectors = self._request(texts)
                check_vectors(vectors, len(texts), self.dimensions)
                return vectors
            except openai.RateLimitError as exc:
                if exc.code == "insufficient_quota":
                    raise ProviderError("the account's quota is used up (429 insufficient_quota): add credit or raise the limit") from None
                last = exc
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as exc:
                template = _FATAL[exc.status_code].replace("${env}", self.config.api_key_env)
                raise ProviderError(template.format(model=self.model)) from None
            except (openai.InternalServerError, openai.APIConnectionError, ResponseError) as exc:
                last = exc  # APITimeoutError is an APIConnectionError
            except openai.BadRequestError:
                raise
            except openai.APIStatusError as exc:
                raise ProviderError(f"the server refused the request: {_describe(exc)}") from None
        raise ProviderError(
            f"{self.config.max_attempts} attempts at {len(texts)} texts failed; last: {_describe(last)}"
        )

    def _request(self, texts: list[str]) -> np.ndarray:
        self.requests += 1
        extra = {"dimensions": self.config.dimensions} if self.config.dimensions else {}
        response = self.client.embeddings.create(
            model=self.model, input=texts, encoding_format="base64", **extra
        )
        return decode_response(response.data, len(texts))

    def close(self) -> None:
        self.client.close()


def decode_response(items: list, count: int) -> np.ndarray:
    """Base64 float32 items, placed by their `index`; ResponseError on a missing or repeated index."""
    indexes = sorted(item.index for item in items)
    if indexes != list(range(count)):
        raise ResponseError(f"expected indexes 0..{count - 1}, got {len(items)} items with indexes {indexes[:5]}...")
    rows = [None] * count
    for item in items:
        if not isinstance(item.embedding, str):
            raise ResponseError("expected base64 embeddings, got a list of floats")
        rows[item.index] = np.frombuffer(base64.b64decode(item.embedding), dtype="<f4")
    if len({row.shape for row in rows}) > 1:
        raise ResponseError("vectors in one response differ in length")
    return np.stack(rows) if rows else np.empty((0, 0), dtype=np.float32)


def _retry_delay(error: Exception | None, attempt: int) -> float:
    """The server's retry-after when it gives one, else exponential backoff with full jitter."""
    response = getattr(error, "response", None)
    if response is not None:
        for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
            try:
                return min(float(response.headers[header]) * scale, 60.0)
            except (KeyError, ValueError):
                pass
    return random.uniform(0, min(0.5 * 2**attempt, 30.0))


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    return str(body.get("message") or exc.status_code)


def _describe(exc: Exception | None) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code} {_message(exc)}"
    return f"{type(exc).__name__}: {exc}"
