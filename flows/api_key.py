"""Where a run's API key comes from: a Prefect Secret block, else the environment."""

from __future__ import annotations

import os

from pipeline.config import EmbeddingConfig
from pipeline.errors import ProviderError


def read_api_key(config: EmbeddingConfig) -> str | None:
    """The key from the Prefect Secret block if one is named, else from the environment."""
    if config.api_key_block:
        from prefect.blocks.system import Secret

        try:
            secret: Secret = Secret.load(config.api_key_block)  # type: ignore[assignment]  # sync here
            return secret.get()
        except ValueError:  # Prefect's answer for a block that does not exist
            raise ProviderError(
                f"embedding.api_key_block {config.api_key_block!r}: no such Secret block on this Prefect server"
            ) from None
    return os.environ.get(config.api_key_env)
