"""Providers, found by name in a plain registry (`registry.py`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.errors import ConfigError
from pipeline.providers.registry import DEFAULT_BATCH_API, provider_class, provider_names

if TYPE_CHECKING:  # the config validates provider names through this package: no import back
    from pipeline.config import EmbeddingConfig
    from pipeline.providers.base import Embedder

__all__ = [
    "batch_api_embedder",
    "check_embedding_config",
    "check_truncation",
    "get_embedder",
    "provider_class",
    "provider_names",
]


def get_embedder(config: EmbeddingConfig, api_key: str | None = None) -> Embedder:
    """The embedder `config.provider` names, ready to use."""
    return provider_class(config.provider)(config, api_key)


def check_embedding_config(config: EmbeddingConfig) -> None:
    """What `config.provider` refuses (e.g. an API key bound for another host), raised before
    anything starts; makes no call."""
    provider_class(config.provider).check_config(config)


def check_truncation(config: EmbeddingConfig, truncate: int | None) -> None:
    """Refuse `output.dimensions_truncate` for a model not trained to be cut (Matryoshka)."""
    if truncate is not None and not provider_class(config.provider).matryoshka(config.model):
        raise ConfigError(
            f"output.dimensions_truncate: {config.model} (provider {config.provider}) is not a Matryoshka-trained "
            "model, so its cut vectors would lose their meaning; remove output.dimensions_truncate"
        )


def batch_api_embedder(config: EmbeddingConfig, api_key: str | None) -> Embedder:
    """The embedder whose batch jobs `embedpipe batches` shows: the configured provider's own,
    or its `batch_provider`'s, or (a provider with neither, like the default local one) OpenAI's."""
    configured = provider_class(config.provider)
    name = config.provider if configured.uses_batch_api else configured.batch_provider or DEFAULT_BATCH_API
    return get_embedder(config.model_copy(update={"provider": name}), api_key)
