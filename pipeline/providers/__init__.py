"""Providers, found by name in a plain registry."""

from __future__ import annotations

from pipeline.config import EmbeddingConfig
from pipeline.providers.base import Embedder


def _local():
    from pipeline.providers.local import LocalEmbedder

    return LocalEmbedder


def _openai():
    from pipeline.providers.openai import OpenAIEmbedder

    return OpenAIEmbedder


def _openai_batch():
    from pipeline.providers.openai_batch import OpenAIBatchEmbedder

    return OpenAIBatchEmbedder


# Imported on use: torch loads only for the local provider.
PROVIDERS = {"local": _local, "openai": _openai, "openai-batch": _openai_batch}


def get_embedder(config: EmbeddingConfig, api_key: str | None = None) -> Embedder:
    """The embedder `config.provider` names, ready to use (the config allows only these names)."""
    return PROVIDERS[config.provider]()(config, api_key)


def check_embedding_config(config: EmbeddingConfig) -> None:
    """What `config.provider` refuses (e.g. an API key bound for another host), raised before
    anything starts; makes no call."""
    PROVIDERS[config.provider]().check_config(config)
