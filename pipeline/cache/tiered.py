"""The local cache in front of a shared tier (`cache.shared_path`), for runs across hosts.

A lookup reads the local cache, then asks the shared tier, in one bulk request, for what the
local cache lacked; what it finds is stored locally (the next lookup stays on this host) and
used. A vector newly paid for is stored locally at once, as always, and handed to a thread
that writes it to the shared tier with whatever else was handed over meanwhile: requests never
wait on the object store. Closing the cache waits for those writes, so the next host finds them.
With no `shared_path`, `open_cache` returns the plain local cache and nothing here runs.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from pipeline.cache.shared_tier import SharedTier
from pipeline.cache.vectors import Hits, Lookup, VectorCache
from pipeline.cache.writer import CacheWriter
from pipeline.config import CacheConfig

# A text the shared tier lacked is not asked for again this soon. A partition waiting for another
# process's vector (`Claims.stored_elsewhere`) looks ten times a second; each look would otherwise
# be a GET per text, and a run's second look just after its first (`Claims.claim_across`) another.
MISS_MEMORY = 1.0


def open_cache(settings: CacheConfig, embedder) -> VectorCache:
    """The cache of `embedder`'s vectors as `settings` (the config's `cache` section) describe it:
    local, or local in front of the shared tier (checked now, before anything is spent)."""
    if settings.shared_path is None:
        return VectorCache.for_embedder(settings.path, embedder)
    return TieredCache(settings.path, embedder.cache_namespace, embedder.dimensions, settings.shared_path)


def settled_shared_counts(cache: VectorCache) -> tuple[int, int]:
    """Once `cache`'s shared writes are in: how many vectors it read from the shared tier and
    wrote to it (none for a local cache)."""
    if not isinstance(cache, TieredCache):
        return 0, 0
    cache.flush_shared()
    return cache.shared_hits, cache.shared_writes


class TieredCache(VectorCache):
    """A `VectorCache` at `path` that misses into, and fills, the shared tier at `shared_path`."""

    def __init__(self, path: str | Path, namespace: str, dimensions: int, shared_path: str):
        super().__init__(path, namespace, dimensions)
        try:
            self.shared = SharedTier(shared_path, namespace, dimensions)
        except BaseException:
            super().close()
            raise
        self.shared_hits = 0  # vectors the local cache lacked and the shared tier held
        self.shared_writes = 0  # vectors written to the shared tier
        self._counting = threading.Lock()
        self._missed: OrderedDict[str, float] = OrderedDict()  # text -> when the tier lacked it, oldest first
        self._uploader: CacheWriter[tuple[str, bytes]] | None = None  # started by the first write
        self._starting_uploader = threading.Lock()

    def hits(self, texts: list[str]) -> Hits:
        """The local cache's usable vectors, and the shared tier's for those it lacked (stored
        locally now). An object in the tier that is no usable vector is a miss, as a bad local
        entry is; a bad local entry the tier holds a good vector for is replaced by it. A text
        the tier lacked is not asked for again within `MISS_MEMORY` seconds."""
        local = super().hits(texts)
        lacked = np.flatnonzero(~local.found).tolist()
        asking = self._not_missed_lately([texts[i] for i in lacked])
        if not asking:
            return local
        shared = Lookup()
        self._check_into(shared, list(self.shared.get_many(asking).items()))
        if shared.vectors:
            VectorCache.put_many(self, shared.vectors)  # the local cache only: the tier has them
        now = time.monotonic()
        with self._counting:
            self.shared_hits += len(shared.vectors)
            self._missed.update((text, now) for text in asking if text not in shared.vectors)
        bad = [text for text in dict.fromkeys([*local.bad, *shared.bad]) if text not in shared.vectors]
        if not shared.vectors:
            return Hits(local.found, local.matrix, bad)
        at = np.array([i for i in lacked if texts[i] in shared.vectors], dtype=np.intp)
        fetched = np.stack([shared.vectors[texts[i]] for i in at.tolist()])
        return Hits.at(len(texts), [np.flatnonzero(local.found), at], [local.matrix, fetched], bad)

    def _not_missed_lately(self, texts: list[str]) -> list[str]:
        """Those of `texts` the shared tier did not lack in the last `MISS_MEMORY` seconds."""
        forget = time.monotonic() - MISS_MEMORY
        with self._counting:
            while self._missed and next(iter(self._missed.values())) < forget:  # oldest first
                self._missed.popitem(last=False)
            return [text for text in texts if text not in self._missed]

    def forget_shared_misses(self, texts: list[str]) -> None:
        """Ask the shared tier for `texts` at the next lookup: another process just said it stored them."""
        with self._counting:
            for text in texts:
                self._missed.pop(text, None)

    def put_many(self, vectors: dict[str, np.ndarray]) -> None:
        """Store vectors locally (a `CacheError` if they cannot be kept), and hand them to the
        thread that writes them to the shared tier (a failed write is raised by a later call)."""
        super().put_many(vectors)
        raws = [(text, np.asarray(vector, dtype="<f4").tobytes()) for text, vector in vectors.items()]
        self._started_uploader().put(raws)

    def flush_shared(self) -> None:
        """Return once every vector handed over is in the shared tier (or raise why not)."""
        if self._uploader is not None:
            self._uploader.flush()

    def close(self) -> None:
        """Finish the shared writes, then close the local cache; a `CacheError` if either fails."""
        try:
            if self._uploader is not None:
                self._uploader.close()
        finally:
            super().close()

    def _started_uploader(self) -> CacheWriter[tuple[str, bytes]]:
        with self._starting_uploader:
            if self._uploader is None:
                self._uploader = CacheWriter(self._upload, lambda: None)
            return self._uploader

    def _upload(self, rows: list[tuple[str, bytes]]) -> None:
        """Write (text, bytes) rows to the shared tier in one bulk call (the uploader thread's)."""
        raws = dict(rows)  # a text stored twice meanwhile is written once
        self.shared.put_many(raws)
        with self._counting:
            self.shared_writes += len(raws)
