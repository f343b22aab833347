"""What a run counts (`RunStats`, the one stats object: a run's, a worker's, an embedder's,
added up with `merge`), each distinct chunk once (`ChunkTally`): as a cache hit, as sent, or as
in flight elsewhere.

A run meets a chunk many times (in several texts, in several record batches, in several
partitions) but counts it once, so that `chunks = cache hits + sent + in flight elsewhere`.
Chunks are kept as `hash64` values, eight bytes each. Cluster workers each keep a tally of
their partition and the flow merges them by hash: a chunk one worker sent and another then
found in the cache is one chunk, sent.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from dataclasses import dataclass, field, fields

import numpy as np

from pipeline.hashset import HashSet, hash64
from pipeline.run.distinct_texts import DistinctTexts


@dataclass
class RunStats:
    """What a run did, for the summary and the manifest."""

    rows: int = 0
    unchanged_rows: int = 0  # kept from the last run: their input files did not change
    reused_rows: int = 0  # in changed files, rows equal to the last run's: its vectors kept
    null_texts: int = 0  # null, empty or whitespace-only: null vector, nothing sent
    distinct_texts: int = 0
    # chunks = cache_hits + embedded_chunks + in_flight_elsewhere: each chunk counted once, when first met
    chunks: int = 0  # distinct chunks of the distinct texts, by chunk text across the whole run
    cache_hits: int = 0  # chunks the cache held when the run first met them
    bad_cache_entries: int = 0  # cached vectors not finite, zero or the wrong size: embedded again, counted as sent
    embedded_chunks: int = 0  # chunks sent, through the endpoint or the Batch API
    embedded_tokens: int = 0  # tokens of every accepted request, Batch API included: the server's usage
    in_flight_elsewhere: int = 0  # chunks another process sharing the cache was embedding: awaited, not paid here
    shared_hits: int = 0  # cache.shared_path: vectors the local cache lacked and the shared tier held (in cache_hits)
    shared_writes: int = 0  # cache.shared_path: vectors this run wrote to the shared tier
    requests: int = 0  # every attempt sent to the provider
    retries: dict = field(default_factory=dict)  # retried attempts by cause
    rate_limited: int = 0  # answers that were 429 rate_limit_exceeded, all retried
    held_back: dict = field(default_factory=dict)  # budget -> [configured cap, the server's limit above it], a minute
    timed_out_tokens: int = 0  # in attempts that timed out and were resent: maybe billed twice
    batch_api: dict = field(default_factory=dict)  # openai-batch: batches, requests, inputs sent
    cost_usd: float | None = None  # tokens sent at the price table's price; None: no price known
    seconds: float = 0.0

    def as_dict(self, shared_tier: bool = True) -> dict:
        """Every figure, for the manifest; the shared tier's only where one is configured."""
        return {f.name: getattr(self, f.name) for f in fields(self) if shared_tier or f.name not in _SHARED}

    def merge(self, other: RunStats, skip: tuple[str, ...] = ()) -> None:
        """Add `other`'s counts to these (a worker's partition, or what an embedder sent), but
        those named in `skip`. The run's own figures (`held_back`, `cost_usd`, `seconds`) are
        never added."""
        for name in (name for name in _ADDED if name not in skip):
            mine, theirs = getattr(self, name), getattr(other, name)
            if isinstance(mine, dict):
                setattr(self, name, {key: mine.get(key, 0) + theirs.get(key, 0) for key in {*mine, *theirs}})
            else:
                setattr(self, name, mine + theirs)

    def since(self, earlier: RunStats) -> RunStats:
        """What these running totals added to `earlier`, the same counter's totals before."""
        added = RunStats()
        for name in _ADDED:
            now, then = getattr(self, name), getattr(earlier, name)
            if isinstance(now, dict):
                setattr(added, name, {key: n - then.get(key, 0) for key, n in now.items()})
            else:
                setattr(added, name, now - then)
        return added


_SHARED = ("shared_hits", "shared_writes")  # cache.shared_path's
_OWN = ("held_back", "cost_usd", "seconds")  # the whole run's: said, priced and timed once
_ADDED = tuple(f.name for f in fields(RunStats) if f.name not in _OWN)


# The classes a chunk can be counted in, the strongest first: a chunk reported in two is
# counted in the stronger one only, whichever report came first.
KINDS = ("sent", "hit", "elsewhere")


class ChunkTally:
    """The distinct chunks met, and how each got its vector."""

    def __init__(self):
        self.met = HashSet()  # every distinct chunk met: the run's `chunks`
        self._kinds = {kind: HashSet() for kind in KINDS}
        self.counts = dict.fromkeys(KINDS, 0)

    def meet(self, hashes: np.ndarray) -> np.ndarray:
        """Note chunks met; for each, True where the run meets it for the first time."""
        return self.met.add_hashes(hashes)

    def add(self, kind: str, hashes: np.ndarray) -> None:
        """Count chunks as `kind`, unless already counted as it or as a stronger kind; a chunk
        counted as a weaker kind moves to this one."""
        rank = KINDS.index(kind)
        keys = np.unique(hashes)
        for stronger in KINDS[:rank]:
            keys = keys[~self._kinds[stronger].contains_hashes(keys)]
        keys = keys[self._kinds[kind].add_hashes(keys)]
        self.counts[kind] += len(keys)
        for weaker in KINDS[rank + 1 :]:  # counted in the strongest weaker kind that holds it
            held = self._kinds[weaker].contains_hashes(keys)
            self.counts[weaker] -= int(held.sum())
            keys = keys[~held]

    def holds(self, kind: str, hashes: np.ndarray) -> np.ndarray:
        """For each chunk, whether it is counted as `kind`."""
        return self._kinds[kind].contains_hashes(hashes)

    def export(self) -> dict[str, np.ndarray]:
        """The chunks met and each kind's chunks, as hashes: plain data for another process."""
        return {"met": self.met.hashes(), **{kind: members.hashes() for kind, members in self._kinds.items()}}

    def merge(self, exported: dict[str, np.ndarray]) -> np.ndarray:
        """Add another tally's `export`; returns those of its chunks this one had not met."""
        new = exported["met"][self.meet(exported["met"])]
        for kind in KINDS:
            self.add(kind, exported[kind])
        return new


class RunCounter:
    """A run's `RunStats`, counted from many threads: rows, each distinct text and chunk once
    (by `hash64`), and how each chunk got its vector; `merge` adds another process's counts."""

    def __init__(self) -> None:
        self._stats = RunStats()
        self._tally = ChunkTally()  # distinct chunks so far, and how each was had
        self._texts = DistinctTexts(self._tally.met)  # distinct texts so far
        self._sent_ahead = HashSet()  # chunks handed to the Batch API before the run
        self._bad = HashSet()  # chunks whose cached entry was bad, counted once
        self._waiting: list[tuple[np.ndarray, np.ndarray]] = []  # batches met, not yet in the tally
        self._lock = threading.Lock()

    @property
    def stats(self) -> RunStats:
        """What the run did so far, every batch met counted."""
        with self._lock:
            self._count_waiting()
        return self._stats

    def skipped(self, rows: int, unchanged: bool = False) -> None:
        """Rows kept without embedding: a part an earlier attempt finished, or (`unchanged`) one
        kept from the last run because its input did not change."""
        with self._lock:
            self._stats.rows += rows
            self._stats.unchanged_rows += rows if unchanged else 0

    def reused(self, rows: int) -> None:
        """Rows that take their vectors from the last run's output."""
        with self._lock:
            self._stats.rows += rows
            self._stats.reused_rows += rows

    def met(
        self,
        rows: int,
        blank: int,
        texts: list[str],
        chunks: list[str],
        cached: np.ndarray,
        long: Collection[str] = (),
        hashes: np.ndarray | None = None,
    ) -> None:
        """Rows read, the texts not seen before (those in `long` of several chunks, the others
        each its own chunk) and the chunks met for the first time: as cache hits where `cached`
        (as sent where the Batch API had just embedded them); the others are counted when embedded.
        `hashes` are the chunks' `hash64`, where the caller has them already. Batches whose texts
        are each one chunk wait and are counted together (`COUNT_TOGETHER` hashes, or as soon as
        anything else reads the counts or adds to them, but the chunks a request embedded)."""
        hashes = _hashes(chunks) if hashes is None else hashes
        with self._lock:
            self._stats.rows += rows
            self._stats.null_texts += blank
            if chunks is texts or not long:  # each text its one chunk: counted with the next batches
                self._waiting.append((hashes, cached))
                if sum(len(h) for h, _ in self._waiting) >= COUNT_TOGETHER:
                    self._count_waiting()
                return
            self._count_waiting()
            first = self._tally.meet(hashes)
            self._count_met(hashes, cached, first, self._new_texts(texts, chunks, hashes, first, long))

    def _count_waiting(self) -> None:  # under the lock; before anything else reads or adds to the tally
        """Count the batches `met` left waiting, together: a set spilled to disk is then read
        through once for them all, not once a batch. Chunks embedded are counted as sent without
        waiting for this: a chunk is counted in the strongest class reported, whichever report comes
        first, and the sets of chunks met, read through for each request, cost a 10M-row run 12 s."""
        if not self._waiting:
            return
        hashes, cached = (np.concatenate(parts) for parts in zip(*self._waiting))
        self._waiting = []
        first = self._tally.meet(hashes)
        self._count_met(hashes, cached, first, self._texts.meet_short(hashes, first))

    def _count_met(self, hashes: np.ndarray, cached: np.ndarray, first: np.ndarray, new_texts: int) -> None:
        self._stats.distinct_texts += new_texts
        self._stats.chunks += int(first.sum())
        found = hashes[first & cached]
        ahead = self._sent_ahead.contains_hashes(found)
        self._tally.add("sent", found[ahead])
        self._tally.add("hit", found[~ahead])
        self._tally_into_stats()

    def _new_texts(
        self, texts: list[str], chunks: list[str], hashes: np.ndarray, first: np.ndarray, long: Collection[str]
    ) -> int:  # under the lock; a batch with `long` texts (one without is counted in `_count_waiting`)
        at = {chunk: i for i, chunk in enumerate(chunks)}
        short = np.array([at[text] for text in texts if text not in long], dtype=np.intp)
        inside = np.ones(len(chunks), dtype=bool)
        inside[short] = False
        new = self._texts.meet_short(hashes[short], first[short])
        return new + self._texts.meet_long(_hashes([t for t in texts if t in long]), hashes[inside & first])

    def sent_ahead(self, chunks: list[str]) -> None:
        """Chunks handed to the Batch API before the run reads them again."""
        with self._lock:
            self._count_waiting()
            self._sent_ahead.add_many(chunks)

    def embedded(self, chunks: list[str], tokens: int) -> None:
        """Chunks this run embedded and stored, and their tokens."""
        hashes = hash64(chunks)
        with self._lock:  # the batches waiting are not counted first: see `_count_waiting`
            self._tally.add("sent", hashes)
            self._stats.embedded_tokens += tokens
            self._tally_into_stats()

    def were_embedded(self, chunks: list[str]) -> list[bool]:
        """For each chunk, whether this run embedded it (or, sent ahead, had the Batch API embed
        it): the tally's "sent", not a set of its own holding the same millions of hashes."""
        hashes = _hashes(chunks)
        with self._lock:
            if len(self._sent_ahead):  # a batch waiting counts the chunks it met sent ahead as sent
                self._count_waiting()
            return list(self._tally.holds("sent", hashes))

    def elsewhere(self, chunks: list[str]) -> None:
        """Chunks another process embedded while this one waited: not paid here."""
        if chunks:
            hashes = hash64(chunks)
            with self._lock:
                self._count_waiting()
                self._tally.add("elsewhere", hashes)
                self._tally_into_stats()

    def bad_entries(self, chunks: list[str]) -> None:
        """Cached entries that were no usable vector, each counted once."""
        with self._lock:
            self._stats.bad_cache_entries += int(self._bad.add_many(chunks).sum())

    def merge(self, stats: RunStats, texts: np.ndarray, chunks: dict[str, np.ndarray]) -> None:
        """Add what a partition embedded in another process counted (its `stats` and `export`):
        its distinct texts and chunks by hash, so that one it shares with other partitions counts
        once, and its other counts as they are."""
        with self._lock:
            self._count_waiting()
            self._stats.merge(stats, skip=_BY_HASH)
            fresh = texts[~self._texts.holds(texts)]  # before its chunks join those met here
            new_chunks = self._tally.merge(chunks)
            self._stats.distinct_texts += self._texts.merge(fresh, texts, new_chunks)
            self._stats.chunks += len(new_chunks)
            self._tally_into_stats()

    def export(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The distinct texts and the chunk tally, as hashes, for `merge` in another process."""
        with self._lock:
            self._count_waiting()
            return self._texts.hashes(), self._tally.export()

    def _tally_into_stats(self) -> None:  # under the lock
        counts = self._tally.counts
        self._stats.cache_hits, self._stats.embedded_chunks = counts["hit"], counts["sent"]
        self._stats.in_flight_elsewhere = counts["elsewhere"]


# Batches `RunCounter.met` counts together, in hashes: a spilled set is read through once for them.
COUNT_TOGETHER = 65_536
# Counted by hash in `RunCounter`: a text or chunk met in several partitions is one.
_BY_HASH = ("distinct_texts", "chunks", "cache_hits", "embedded_chunks", "in_flight_elsewhere")


def _hashes(texts: list[str]) -> np.ndarray:
    return hash64(texts) if texts else np.zeros(0, dtype=np.int64)
