"""Azure OpenAI's embeddings endpoint: `embedding.base_url` is the resource
(https://myres.openai.azure.com), `embedding.deployment` the deployment, `embedding.model` the
model behind it (its dimensions, prices and tokenizer).

Requests go through `openai.AzureOpenAI` to /openai/deployments/{deployment}/embeddings with
?api-version=`embedding.api_version`; the key travels only in the `api-key` header. An Azure key
is never the default OPENAI_API_KEY: the config names its variable (or Secret block) explicitly.
Everything else (rate limits, retries, failure rules) is `OpenAIEmbedder`'s.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import httpx2

from pipeline.config import EmbeddingConfig
from pipeline.errors import ConfigError, ProviderError
from pipeline.providers.http import Fatal
from pipeline.providers.openai import OpenAIEmbedder
from pipeline.providers.openai_batch import OpenAIBatchEmbedder

if TYPE_CHECKING:
    import openai


class AzureOpenAIEmbedder(OpenAIEmbedder):
    """Embeddings from an Azure OpenAI deployment, within its rate limits."""

    provider = "azure-openai"
    batch_provider = "azure-openai-batch"

    def __init__(self, config: EmbeddingConfig, api_key: str | None):
        self.check_config(config)  # a missing deployment is named before a missing key
        if not api_key:
            raise ProviderError(
                f"no API key: set the environment variable {config.api_key_env} to the Azure resource's key "
                "(or embedding.api_key_block to a Prefect Secret block)"
            )
        super().__init__(config, api_key)

    def _make_client(self, config: EmbeddingConfig, api_key: str | None, http_client: httpx2.Client) -> openai.OpenAI:
        """The Azure client: the deployment in the path, the api-version in the query, the key as
        `api-key` (passed explicitly, so no AZURE_OPENAI_* variable is read), its retries off."""
        import openai

        return openai.AzureOpenAI(
            azure_endpoint=str(config.base_url),
            azure_deployment=config.deployment,
            api_version=config.api_version,
            api_key=api_key,
            max_retries=0,
            timeout=config.request_timeout_seconds,
            http_client=http_client,
        )

    @classmethod
    def check_config(cls, config: EmbeddingConfig) -> None:
        """Refuse an Azure config without a resource, a deployment or a named key variable."""
        name = f"embedding.provider {config.provider}"
        if not config.base_url:
            raise ConfigError(
                f"{name} needs embedding.base_url: the resource's endpoint, e.g. https://myres.openai.azure.com"
            )
        if not config.deployment:
            raise ConfigError(f"{name} needs embedding.deployment: the name of the deployment serving {config.model}")
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", config.deployment):  # it becomes a path segment as is
            raise ConfigError(
                f"embedding.deployment {config.deployment!r} is not a deployment name: "
                "use letters, digits, '.', '_' and '-' (at most 64), as Azure does"
            )
        if "api_key_env" not in config.model_fields_set and not config.api_key_block:
            raise ConfigError(
                f"{name}: name the variable holding the Azure key in embedding.api_key_env "
                "(e.g. AZURE_OPENAI_API_KEY); the default, OPENAI_API_KEY, is only ever sent to api.openai.com"
            )

    @classmethod
    def endpoint(cls, config: EmbeddingConfig) -> str | None:
        """The deployment's address: another deployment (even of the same model) is another endpoint."""
        return f"{str(config.base_url).rstrip('/')}/openai/deployments/{config.deployment}"

    @property
    def cache_namespace(self) -> str:
        return f"azure-openai:{self.endpoint(self.config)}:{self.model}:{self.dimensions}"

    def _in_http_terms(self, exc: openai.APIError) -> Exception:
        import openai

        if isinstance(exc, openai.NotFoundError):  # Azure's 404 is a deployment, a resource or an api-version
            return Fatal(
                f"deployment {self.config.deployment} was not found at {self.config.base_url} (404): check "
                f"embedding.deployment, embedding.base_url and embedding.api_version ({self.config.api_version})"
            )
        return super()._in_http_terms(exc)


class AzureOpenAIBatchEmbedder(OpenAIBatchEmbedder, AzureOpenAIEmbedder):
    """Azure's Batch API: files and batches under the resource's /openai/ routes; each request
    posts to /embeddings and names the deployment (a Global-Batch one) as its model."""

    provider = "azure-openai-batch"
    query_provider = "azure-openai"
    batch_url = "/embeddings"

    @property
    def batch_model(self) -> str:
        return str(self.config.deployment)
