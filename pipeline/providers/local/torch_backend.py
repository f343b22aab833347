"""sentence-transformers on torch fp32: the reference every other backend is measured against."""

from __future__ import annotations

import numpy as np

from pipeline.providers.local.backend import Backend, ModelSpec
from pipeline.providers.local.devices import batch_size_for


class TorchBackend(Backend):
    """The model as sentence-transformers runs it, on the CPU, one GPU, or a process per GPU."""

    name = "torch"
    namespace_suffix = ""  # caches written before backends existed hold torch's vectors
    describes = "sentence-transformers on torch fp32"

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        self.model = SentenceTransformer(str(spec.path), device=spec.devices[0])
        self.model.max_seq_length = spec.max_seq_length
        hidden = spec.transformer.get("hidden_size", 768)
        heads = spec.transformer.get("num_attention_heads", 12)
        self.batch_size = batch_size_for(spec.devices[0], spec.max_seq_length, hidden, heads)
        # several GPUs: one process each, fed by sentence-transformers' pool
        self.pool = self.model.start_multi_process_pool(list(spec.devices)) if len(spec.devices) > 1 else None

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True, pool=self.pool)
        return np.asarray(vectors, dtype=np.float32)

    def token_count(self, text: str) -> int:
        return len(self.model.tokenizer(text, truncation=False)["input_ids"])  # its own tokenizer, to be sure

    @property
    def dimensions(self) -> int:
        return int(self.model.get_embedding_dimension() or 0)

    def close(self) -> None:
        if self.pool is not None:
            self.model.stop_multi_process_pool(self.pool)
            self.pool = None
