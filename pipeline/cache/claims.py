"""Who embeds a text that partitions running at once need together, so that it is paid for once:
partitions in this process (threads) wait for the one embedding it; processes sharing one cache
(cluster workers, `owner` set) claim texts in a `ClaimStore`: the cache itself, or on a Dask
cluster the coordinator on its scheduler (`pipeline.run.coordinator.CoordinatedClaims`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from pipeline.cache.vectors import VectorCache

CLAIM_SECONDS = 900.0  # a claim a crashed process left lapses after this; others then embed its texts
Lookup = Callable[[list[str]], dict[str, np.ndarray]]


class ClaimStore(Protocol):
    """Where claims across processes are kept: `VectorCache` has these three."""

    def claim_many(self, texts: list[str], owner: str, seconds: float) -> list[str]: ...

    def release_many(self, texts: list[str], owner: str) -> None: ...

    def claimed(self, texts: list[str]) -> set[str]: ...


class Claims:
    """Claims on texts being embedded, here and (with `owner`) across processes, in `store`
    (by default the cache)."""

    def __init__(self, cache: VectorCache, lookup: Lookup, owner: str | None = None, store: ClaimStore | None = None):
        self.cache, self.lookup, self.owner = cache, lookup, owner
        self.store: ClaimStore = store if store is not None else cache
        self._in_flight: dict[str, threading.Event] = {}  # text -> set once its embedding ends
        self._lock = threading.Lock()

    def claim_here(self, misses: list[str]) -> tuple[list[str], dict[str, threading.Event], threading.Event]:
        """Split misses into those this call embeds and those another partition is already
        embedding (with the event each sets when done); `release_here` the first with the third."""
        done = threading.Event()
        with self._lock:
            theirs = {t: self._in_flight[t] for t in misses if t in self._in_flight}
            mine = [t for t in misses if t not in theirs]
            self._in_flight.update(dict.fromkeys(mine, done))
        return mine, theirs, done

    def release_here(self, mine: list[str], done: threading.Event) -> None:
        with self._lock:
            for text in mine:
                self._in_flight.pop(text, None)
        done.set()

    def claim_across(self, texts: list[str]) -> tuple[list[str], list[str], dict[str, np.ndarray]]:
        """Split `texts` into those this process now holds, those another process is embedding,
        and the vectors of those another process stored since our lookup (let go again)."""
        if not self.owner or not texts:
            return texts, [], {}
        held = set(self.store.claim_many(texts, self.owner, CLAIM_SECONDS))
        self.cache.forget_shared_misses(list(held))  # another host may have stored them since our lookup
        stored = self.lookup([t for t in texts if t in held])
        if stored:
            self.store.release_many(list(stored), self.owner)
        return [t for t in texts if t in held and t not in stored], [t for t in texts if t not in held], stored

    def release_across(self, mine: list[str]) -> None:
        """Let go of this process's claims on `mine` once what it stored of them can be read on
        other hosts: a host waiting on a claim looks for the vector as soon as it is let go."""
        if not self.owner:
            return
        try:
            self.cache.flush_shared()
        finally:  # a failed upload still lets go: the others then send the texts themselves
            self.store.release_many(mine, self.owner)

    def stored_elsewhere(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Wait for another process to store `texts`; those it let go of unstored are left out."""
        found: dict[str, np.ndarray] = {}
        pending = texts
        while pending:
            found.update(self.lookup(pending))
            still = self.store.claimed([t for t in pending if t not in found])
            let_go = [t for t in pending if t not in found and t not in still]
            self.cache.forget_shared_misses(let_go)  # stored just now, maybe since our last look
            found.update(self.lookup(let_go))
            pending = [t for t in pending if t in still and t not in found]
            if pending:
                time.sleep(0.1)
        return found
