"""OpenAI's embeddings endpoint, or any server that speaks its protocol (`embedding.base_url`).

The client's own retries are off: every attempt passes the rate limiter and is counted here.
An answer no retry can fix (a refused key, an empty quota) stops every request of the run,
including those waiting for budget: none leaves after it. A malformed answer, whatever is wrong
with it, is retried for the items it got wrong, never a traceback. The default key variable,
OPENAI_API_KEY, is only ever sent to OpenAI's own host.

`openai` is imported where the client is built, as the first request nears: the import takes half
a second of the interpreter, which a run that finds every text in the cache never needs.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import threading
from typing import TYPE_CHECKING

import httpx2

from pipeline.concurrency import in_background
from pipeline.config import EmbeddingConfig
from pipeline.errors import ConfigError, ProviderError
from pipeline.providers.http import Answer, Fatal, HTTPEmbedder, RateLimited, Rejected, Transient, retry_after
from pipeline.providers.openai_answers import decode_response, json_object, prompt_tokens
from pipeline.providers.transport import BackgroundTransport

if TYPE_CHECKING:
    import openai

KNOWN_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
MATRYOSHKA_PREFIX = "text-embedding-3-"  # trained so that a vector's first dimensions stand on their own
_FATAL = {  # our words, not the server's: a 401's message quotes part of the key
    401: "the API key was refused (401): check the key in {env}",
    403: "access denied (403): the key in {env} may not use model {model}",
    404: "model {model} was not found (404): check embedding.model and embedding.base_url",
}
_QUOTA = "the account's quota is used up (429 insufficient_quota): add credit or raise the limit"
DEFAULT_BASE_URL = "https://api.openai.com/v1"  # the client's, where neither base_url nor OPENAI_BASE_URL is set


class OpenAIEmbedder(HTTPEmbedder):
    """Embeddings through the official `openai` client, within the server's rate limits."""

    provider = "openai"
    max_batch_inputs = 2048
    max_batch_tokens = 300_000
    max_input_tokens = 8192
    accepts_dimensions = True
    batch_provider = "openai-batch"

    def __init__(self, config: EmbeddingConfig, api_key: str | None):
        super().__init__(config, api_key)
        if not api_key and not config.base_url:
            raise ProviderError(
                f"no API key: set the environment variable {config.api_key_env} "
                "(or embedding.api_key_block to a Prefect Secret block)"
            )
        # A closure, not a partial or an attribute: nothing that prints this object shows the key.
        self._new_client = lambda http_client: self._make_client(config, api_key, http_client)
        self._client: openai.OpenAI | None = None
        self._client_lock = threading.Lock()  # one client, however many threads ask for it first
        self._closed = False
        self._transport = BackgroundTransport()
        self._warming = False  # expect_requests started the client's build

    @property
    def client(self) -> openai.OpenAI:
        """The `openai` client every request goes through, built at its first use."""
        with self._client_lock:
            if self._closed:
                raise ProviderError("the provider was closed: no request leaves after it")
            if self._client is None:
                import openai

                http_client = openai.DefaultHttpxClient(transport=self._transport, event_hooks=self.request_hooks())
                client = self._new_client(http_client)
                # Its pool too, before a request takes budget: built after, it delayed the first request's
                # arrival past when the limiter counts its refill from (a 429 on a 1 s window).
                self._transport.ready(client.base_url.scheme)
                self._client = client
            return self._client

    def expect_requests(self) -> None:
        """Build the client in a thread (the `openai` import, the connection pool, the platform
        headers: `uname -p` in a subprocess), so that the first request does not wait for it."""
        if not self._warming:
            self._warming = True
            in_background(self._warm_up)

    def _warm_up(self) -> None:
        self.client.default_headers  # noqa: B018  worked out once, kept for the process

    def _make_client(self, config: EmbeddingConfig, api_key: str | None, http_client: httpx2.Client) -> openai.OpenAI:
        """The `openai` client every request goes through, its own retries off."""
        import openai

        return openai.OpenAI(
            api_key=api_key or "unused",
            base_url=config.base_url,  # None: OPENAI_BASE_URL or api.openai.com
            max_retries=0,
            timeout=config.request_timeout_seconds,
            http_client=http_client,
        )

    @classmethod
    def check_config(cls, config: EmbeddingConfig) -> None:
        check_key_destination(config)

    @classmethod
    def native_dimensions(cls, model: str) -> int | None:
        return KNOWN_DIMENSIONS.get(model)

    @classmethod
    def matryoshka(cls, model: str) -> bool:
        return model.startswith(MATRYOSHKA_PREFIX)

    @classmethod
    def endpoint(cls, config: EmbeddingConfig) -> str | None:
        return chosen_base_url(config)

    @functools.cached_property
    def dimensions(self) -> int:
        if self.config.dimensions:
            return self.config.dimensions
        if self.model in KNOWN_DIMENSIONS:
            return KNOWN_DIMENSIONS[self.model]
        try:  # an unknown model tells us by answering, retried as any request is
            return self._with_retries(["dimension probe"], [2], probing=True).shape[1]
        except Rejected as exc:
            problem = f"HTTP 400 {exc}"
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
        return f"openai:{str(api_base_url(self.config.base_url)).rstrip('/')}:{self.model}:{self.dimensions}"

    def _send(self, texts: list[str], dimensions: int | None) -> Answer:
        import openai

        body: dict[str, object] = {"model": self.model, "input": texts, "encoding_format": "base64"}
        if self.config.dimensions:
            body["dimensions"] = self.config.dimensions
        try:
            # client.post, as openai documents for raw access: `embeddings.create` walks every input
            # string to transform it and parses the answer into a model per vector, milliseconds
            # of interpreter time a request (tens on the first) that the other threads wait for
            response = self.client.post("/embeddings", body=body, cast_to=httpx2.Response)
        except openai.APIError as exc:
            raise self._in_http_terms(exc) from None
        payload = json_object(response)
        vectors, bad = decode_response(payload.get("data"), len(texts), dimensions)
        return Answer(response.headers, vectors, bad, prompt_tokens(payload))

    def _in_http_terms(self, exc: openai.APIError) -> Exception:
        """The `openai` library's exception as `pipeline.providers.http` names what to do."""
        import openai

        if isinstance(exc, openai.APITimeoutError):  # before APIConnectionError, its parent
            return Transient("timeout", describe_error(exc))
        if isinstance(exc, openai.APIConnectionError):
            return Transient("connection", describe_error(exc))
        if not isinstance(exc, openai.APIStatusError):
            return exc
        headers = exc.response.headers
        if isinstance(exc, openai.InternalServerError):
            return Transient("server error", describe_error(exc), retry_after(headers))
        if isinstance(exc, openai.BadRequestError):
            return Rejected(_message(exc))
        fatal = fatal_error(exc, self.config.api_key_env, self.model)
        return Fatal(str(fatal)) if fatal else RateLimited(headers, retry_after(headers))

    def close(self) -> None:
        super().close()
        with self._client_lock:  # a client being built meanwhile is finished first, then closed
            client, self._closed = self._client, True
        (client or self._transport).close()


def chosen_base_url(config: EmbeddingConfig) -> str | None:
    """The server the client will send to, as the user chose it: `embedding.base_url`, else
    OPENAI_BASE_URL; None for OpenAI's own API."""
    return config.base_url or os.environ.get("OPENAI_BASE_URL")


def api_base_url(base_url: str | None) -> httpx2.URL:
    """The URL `openai.OpenAI(base_url=base_url)` sends to, worked out without importing `openai`:
    `base_url`, else OPENAI_BASE_URL, else OpenAI's API, with a '/' ending its path as the client
    adds. Part of the cache's namespace: `tests/pipeline/providers/test_openai.py` holds it to the client's."""
    if base_url is None:
        base_url = os.environ.get("OPENAI_BASE_URL")
    url = httpx2.URL(base_url if base_url is not None else DEFAULT_BASE_URL)
    path, separator, query = url.raw_path.partition(b"?")
    return url if path.endswith(b"/") else url.copy_with(raw_path=path + b"/" + separator + query)


def check_key_destination(config: EmbeddingConfig) -> None:
    """Refuse a server other than OpenAI's unless the config names where its key comes from.

    The default variable, OPENAI_API_KEY, holds an OpenAI key: it is sent only to OpenAI's own
    host. Another server gets a key only from `api_key_env` or `api_key_block` given explicitly
    (YAML or --set), even when that is OPENAI_API_KEY again. Raises ConfigError; sends nothing."""
    if "api_key_env" in config.model_fields_set or config.api_key_block:
        return
    url = chosen_base_url(config)
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
    import openai

    if not isinstance(exc, openai.APIStatusError) or isinstance(
        exc, (openai.InternalServerError, openai.BadRequestError)
    ):
        return None
    if isinstance(exc, openai.RateLimitError):
        return ProviderError(_QUOTA) if exc.code == "insufficient_quota" else None
    if exc.status_code in _FATAL:
        return ProviderError(_FATAL[exc.status_code].format(env=api_key_env, model=model))
    return ProviderError(f"the server refused the request: {describe_error(exc)}")


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    return str(body.get("message") or exc.status_code)


def describe_error(exc: Exception | None) -> str:
    """One line about a failed call: the HTTP status and the server's message, or the exception."""
    openai = sys.modules.get("openai")  # not imported: `exc` cannot be one of its errors
    if openai is not None and isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code} {_message(exc)}"
    return f"{type(exc).__name__}: {exc}"
