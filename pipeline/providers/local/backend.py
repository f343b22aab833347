"""What every local backend is: a way to run one sentence-transformers model, and what it reads of that model."""

from __future__ import annotations

import functools
import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from pipeline.errors import ProviderError


@dataclass(frozen=True)
class ModelSpec:
    """A sentence-transformers model on disk, where its prepared forms are kept, and where it runs."""

    path: Path  # the sentence-transformers model directory
    name: str  # what its prepared forms are called under `models_dir`
    models_dir: Path
    devices: tuple[str, ...]

    @classmethod
    def of(cls, path: Path, name: str, models_dir: Path, devices: list[str]) -> ModelSpec:
        """The spec of the model at `path`; `name` is its configured name (a packaged one keeps it,
        a directory is named by its folder and a hash of where it lies)."""
        if Path(name).expanduser().is_dir():
            name = f"{path.name}-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}"
        return cls(path, name.replace("/", "--"), models_dir, tuple(devices))

    @functools.cached_property
    def max_seq_length(self) -> int:
        """WordPieces the model reads, [CLS] and [SEP] included: the rest of a longer text is cut off."""
        return int(self._json("sentence_bert_config.json").get("max_seq_length") or 512)

    @functools.cached_property
    def pooling(self) -> str:
        """How token vectors become one: "mean" or "cls", as the model's Pooling module says."""
        config = self._json(f"{self._module_path('Pooling')}/config.json")
        if config.get("pooling_mode_mean_tokens"):
            return "mean"
        if config.get("pooling_mode_cls_token"):
            return "cls"
        raise ProviderError(
            f"embedding.model {self.path}: only mean or CLS pooling runs outside torch; use backend torch"
        )

    @functools.cached_property
    def transformer(self) -> dict:
        """The transformer's config.json (hidden_size, num_attention_heads, ...)."""
        return self._json("config.json")

    def _module_path(self, kind: str) -> str:
        modules = json.loads((self.path / "modules.json").read_text(encoding="utf-8"))
        return next((m["path"] for m in modules if m["type"].endswith(f".{kind}")), "")

    def _json(self, relative: str) -> dict:
        try:
            return json.loads((self.path / relative).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}


class Backend(ABC):
    """One way to run a model: loads it (preparing it first where it must be made once), then
    turns texts into vectors. Subclasses state what they are in class attributes."""

    name: ClassVar[str]  # as `embedding.backend` names it
    namespace_suffix: ClassVar[str]  # added to the cache namespace: vectors of different backends never mix
    describes: ClassVar[str]  # a few words for the run summary
    reads_any_length: ClassVar[bool] = False  # True: no input limit, nothing is ever cut off

    def __init__(self, spec: ModelSpec):
        self.spec = spec

    @classmethod
    def cannot_run_on(cls, devices: tuple[str, ...]) -> str | None:
        """Why this backend cannot use `devices`, or None when it can."""
        return None

    @classmethod
    def prepare(cls, spec: ModelSpec) -> Path:
        """The folder this backend loads from, made first (once, atomically) where it must be."""
        return spec.path

    @abstractmethod
    def encode(self, texts: list[str]) -> np.ndarray:
        """One vector per text, (len(texts), dimensions) float32, in order."""

    def token_count(self, text: str) -> int:
        """WordPieces the model's tokenizer makes of `text`, [CLS] and [SEP] included, before any cut."""
        return len(self.wordpieces.encode(text).ids)

    def windows(self, texts: list[str]) -> list[list[tuple[str, int]]]:
        """Each text as the parts the model reads whole, with their WordPiece counts: one part when it
        fits, else cuts at WordPiece boundaries (a chunk of code or URLs can hold twice the WordPieces
        the cl100k chunk limit allows for)."""
        if self.reads_any_length:
            return [[(text, 1)] for text in texts]
        room = self.spec.max_seq_length - 2
        parts = []
        for text, encoding in zip(texts, self.wordpieces.encode_batch(texts, add_special_tokens=False)):
            offsets = encoding.offsets
            if len(offsets) <= room:
                parts.append([(text, len(offsets) + 2)])
                continue
            starts = [offsets[i][0] for i in range(0, len(offsets), room)]
            ends = [*starts[1:], len(text)]
            parts.append([(text[a:b], self.token_count(text[a:b])) for a, b in zip(starts, ends)])
        return parts

    @functools.cached_property
    def wordpieces(self):
        """The model's own tokenizer, counting: nothing cut, nothing padded."""
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.spec.path / "tokenizer.json"))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return tokenizer

    @property
    @abstractmethod
    def dimensions(self) -> int:
        """Length of each vector."""

    def close(self) -> None:
        """Release worker processes and memory."""


def by_length(texts: list[str], batch_size: int) -> list[np.ndarray]:
    """Indices of `texts` in batches of similar length (less padding), longest first."""
    order = np.argsort([-len(text) for text in texts], kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
