"""Providers by name: the built-in ones, and any a package registers under the entry-point
group `embedpipe.providers` (name = "module:Class", the class an `Embedder`).

Names are known without importing a provider: torch loads only for the local one, and a
provider package is imported only when a config names it.
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.providers.base import Embedder

ENTRY_POINT_GROUP = "embedpipe.providers"
DEFAULT_BATCH_API = "openai-batch"  # `embedpipe batches` with a provider that has none (or no config)
BUILT_IN = {
    "local": "pipeline.providers.local:LocalEmbedder",
    "openai": "pipeline.providers.openai:OpenAIEmbedder",
    "openai-batch": "pipeline.providers.openai_batch:OpenAIBatchEmbedder",
    "azure-openai": "pipeline.providers.azure_openai:AzureOpenAIEmbedder",
    "azure-openai-batch": "pipeline.providers.azure_openai:AzureOpenAIBatchEmbedder",
}


@cache
def _registered() -> dict[str, str]:
    found = {point.name: point.value for point in entry_points(group=ENTRY_POINT_GROUP)}
    return {**found, **BUILT_IN}  # a package cannot replace a built-in provider


def provider_names() -> list[str]:
    """Every provider a config may name."""
    return sorted(_registered())


def provider_class(name: str) -> type[Embedder]:
    """The class registered as `name`; a ConfigError naming the known ones for any other."""
    target = _registered().get(name)
    if target is None:
        raise ConfigError(
            f"embedding.provider {name!r} is not known: use one of {', '.join(provider_names())}, "
            f"or install the package that registers it (entry point group {ENTRY_POINT_GROUP})"
        )
    module, _, attribute = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"embedding.provider {name!r}: cannot load {target} ({exc})") from None
