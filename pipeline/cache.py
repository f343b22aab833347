"""Disk cache of vectors, keyed by what produced them and the exact text sent.

Values are raw little-endian float32 bytes: diskcache stores bytes as-is, so nothing is
ever unpickled from disk. Eviction is off: a full disk is an error, not a silent miss.
"""

from __future__ import annotations

import os
from pathlib import Path

import diskcache
import numpy as np

from pipeline.errors import EmbedpipeError
from pipeline.text import text_hash

_DTYPE = np.dtype("<f4")


class VectorCache:
    """Vectors by (namespace, text). `namespace` names provider, endpoint, model and dimensions."""

    def __init__(self, path: str | Path, namespace: str, dimensions: int):
        self.path = Path(path)
        self.namespace = namespace
        self.dimensions = dimensions
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.path, 0o700)  # mkdir's mode is filtered by the umask
            self._cache = diskcache.Cache(str(self.path), eviction_policy="none", size_limit=2**62)
        except (OSError, diskcache.core.sqlite3.Error) as exc:
            raise EmbedpipeError(f"cache.path {self.path}: cannot open the cache ({exc})") from None

    def key(self, text: str) -> str:
        return f"{self.namespace}/{text_hash(text)}"

    def get_many(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The cached vectors of those `texts` that have one; a wrong-sized entry counts as a miss."""
        found = {}
        for text in texts:
            raw = self._cache.get(self.key(text))
            if isinstance(raw, bytes) and len(raw) == self.dimensions * _DTYPE.itemsize:
                found[text] = np.frombuffer(raw, dtype=_DTYPE)
        return found

    def put_many(self, vectors: dict[str, np.ndarray]) -> None:
        """Store vectors in one transaction."""
        with self._cache.transact():
            for text, vector in vectors.items():
                self._cache.set(self.key(text), np.asarray(vector, dtype=_DTYPE).tobytes())

    def close(self) -> None:
        self._cache.close()
