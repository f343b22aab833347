"""A model2vec static model distilled from the transformer: a vector per WordPiece, averaged.
Tens of times faster than the transformer, and only an approximation of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.providers.local.backend import Backend, ModelSpec
from pipeline.providers.local.exports import distill_static, prepared
from pipeline.providers.local.onnx_backend import OnnxBackend

STATIC_BATCH = 1024


class StaticBackend(Backend):
    """model2vec on the CPU (numpy); a GPU would not speed up a table lookup."""

    name = "static"
    namespace_suffix = ":static"
    describes = "model2vec static embeddings distilled from the model"
    reads_any_length = True  # an average of piece vectors: every piece counts, however many

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        from model2vec import StaticModel

        self.model = StaticModel.from_pretrained(str(self.prepare(spec)), normalize=True)

    @classmethod
    def prepare(cls, spec: ModelSpec) -> Path:
        def distill(into: Path) -> None:
            teacher = OnnxBackend(ModelSpec(spec.path, spec.name, spec.models_dir, ("cpu",)))
            distill_static(lambda ids: teacher.pooled(ids, normalise=False), spec.path, into)

        return prepared(spec.models_dir / f"{spec.name}-static", distill)

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(texts, max_length=None, batch_size=STATIC_BATCH, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    def token_count(self, text: str) -> int:
        return len(self.model.tokenizer.encode(text, add_special_tokens=False).ids) + 2  # as the transformer counts

    @property
    def dimensions(self) -> int:
        return int(self.model.dim)
