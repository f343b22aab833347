"""Rows of raw text in, one vector per row out: normalise, dedupe, chunk, cache, embed, pool."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np

from pipeline.cache import VectorCache
from pipeline.chunking import Chunk, chunk_texts, token_counts
from pipeline.counts import ChunkTally, RunStats
from pipeline.hashset import HashSet, hash64
from pipeline.providers.base import Embedder, l2_normalise
from pipeline.text import normalise_paragraphs


@dataclass(frozen=True)
class EmbeddedText:
    """A normalised text, its chunks and their vectors: a row of the chunk table."""

    chunks: list[Chunk]
    chunk_vectors: np.ndarray


@dataclass(frozen=True)
class PreparedRows:
    """Rows ready to embed: each row's normalised text ("" when blank) and each distinct text's
    chunks; once looked up, the chunk vectors the cache held and the tokens of each it lacked."""

    keys: list[str]
    chunked: dict[str, list[Chunk]]
    cached: dict[str, np.ndarray] = field(default_factory=dict)
    misses: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RowVectors:
    """Each row's vector (zeros where its text is blank), which rows have one, and the chunk
    vectors they were pooled from."""

    matrix: np.ndarray
    present: np.ndarray
    rows: PreparedRows
    chunk_vectors: dict[str, np.ndarray]

    def embedded_texts(self) -> list[EmbeddedText | None]:
        """Per row, its chunks and their vectors (None where blank): the chunk table's rows."""
        texts = {
            key: EmbeddedText(chunks, np.stack([self.chunk_vectors[c.text] for c in chunks]))
            for key, chunks in self.rows.chunked.items()
        }
        return [texts[key] if key else None for key in self.rows.keys]


CLAIM_SECONDS = 900.0  # a claim a crashed process left lapses after this; others then embed its texts


@dataclass
class TextEmbedder:
    """Embeds row texts, each distinct text once per run, reading and filling the cache."""

    embedder: Embedder
    cache: VectorCache
    max_tokens: int
    overlap_tokens: int
    stats: RunStats = field(default_factory=RunStats)
    claim_owner: str | None = None  # set where other processes share the cache: claims texts there too
    _seen: HashSet = field(default_factory=HashSet, repr=False)  # distinct texts so far
    _tally: ChunkTally = field(default_factory=ChunkTally, repr=False)  # distinct chunks so far, and how each was had
    _sent_ahead: HashSet = field(default_factory=HashSet, repr=False)  # chunks handed to the Batch API before the run
    _embedded: HashSet = field(default_factory=HashSet, repr=False)  # chunks this run embedded and stored
    _bad: HashSet = field(default_factory=HashSet, repr=False)  # chunks whose cached entry was bad, counted once
    _in_flight: dict = field(default_factory=dict, repr=False)  # text -> Event, while being embedded
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # partitions run in threads

    def skip(self, rows: int, unchanged: bool = False) -> None:
        """Count rows kept without embedding: a part an earlier attempt finished, or (with
        `unchanged`) one kept from the last run because its input did not change."""
        with self._lock:
            self.stats.rows += rows
            self.stats.unchanged_rows += rows if unchanged else 0

    def reuse(self, rows: int) -> None:
        """Count rows that take their vectors from the last run's output: they never reach `prepare`."""
        with self._lock:
            self.stats.rows += rows
            self.stats.reused_rows += rows

    def prepare(self, raw_texts: list[str | None]) -> PreparedRows:
        """All that needs no network, safe to run ahead in another thread: normalise, dedupe,
        chunk, look the chunks up in the cache and count the tokens of those it lacks."""
        rows = self.looked_up(chunk_rows(raw_texts, self.max_tokens, self.overlap_tokens))
        self._count(raw_texts, rows)
        return rows

    def send_ahead(self, raw_texts: list[str | None]) -> dict[str, int]:
        """The chunks (text -> tokens) of these rows that the cache lacks, for the Batch API to
        embed before the run reads them again: those the cache holds by then count as sent."""
        misses = self.looked_up(chunk_rows(raw_texts, self.max_tokens, self.overlap_tokens)).misses
        if misses:
            with self._lock:
                self._sent_ahead.add_many(list(misses))
        return misses

    def looked_up(self, rows: PreparedRows) -> PreparedRows:
        """`rows` with the cache's vectors for their chunks and the token counts of the others
        (counted only now: most chunks of most runs are cached)."""
        chunks = {c.text: c for chunks in rows.chunked.values() for c in chunks}
        cached = self._cached(list(chunks))
        misses = [chunk for text, chunk in chunks.items() if text not in cached]
        return replace(rows, cached=cached, misses=dict(zip((c.text for c in misses), token_counts(misses))))

    def complete(self, rows: PreparedRows) -> RowVectors:
        """The network half: embed the chunks the cache lacked, pool chunks into row vectors."""
        vectors = {**rows.cached, **self._embedded_vectors(rows.misses)}
        pooled = {key: pool_chunks(chunks, vectors) for key, chunks in rows.chunked.items()}
        blank = np.zeros(self.embedder.dimensions, dtype=np.float32)
        by_row = [pooled[key] if key else blank for key in rows.keys]
        matrix = np.stack(by_row) if by_row else np.zeros((0, len(blank)), dtype=np.float32)
        present = np.array([bool(key) for key in rows.keys], dtype=bool)
        return RowVectors(matrix, present, rows, vectors)

    def _embedded_vectors(self, misses: dict[str, int]) -> dict[str, np.ndarray]:
        """Vectors for chunks (text -> tokens) the cache lacked when looked up: stored by this run
        since, being embedded by another partition or process (awaited), or embedded here."""
        claimed, theirs, done = self._claim(list(misses))
        try:
            vectors = self._stored_since_lookup(claimed)
            mine, elsewhere, stored = self._claim_across_processes([t for t in claimed if t not in vectors])
            vectors.update(stored)
            try:
                vectors.update(self._embed(mine, [misses[t] for t in mine]))
            finally:
                if self.claim_owner:
                    self.cache.release_many(mine, self.claim_owner)
            vectors.update(self._stored_elsewhere(elsewhere))
        finally:
            self._release(claimed, done)
        for event in {id(e): e for e in theirs.values()}.values():
            event.wait()  # another partition is embedding these right now
        vectors.update(self._cached(list(theirs)))  # counted by the partition that embedded them
        missing = {t: misses[t] for t in [*theirs, *elsewhere] if t not in vectors}  # its request failed: ours to do
        return vectors if not missing else {**vectors, **self._embedded_vectors(missing)}

    def _embed(self, texts: list[str], counts: list[int]) -> dict[str, np.ndarray]:
        vectors: dict[str, np.ndarray] = {}

        def store(batch: list[str], fresh: np.ndarray) -> None:  # a stopped run resumes from here
            self.cache.put_many(dict(zip(batch, fresh)))

        for batch, fresh in self.embedder.embed_iter(texts, counts, store):
            vectors.update(zip(texts[batch], fresh))
            hashes = hash64(texts[batch])
            with self._lock:
                self._embedded.add_hashes(hashes)
                self._tally.add("sent", hashes)
                self.stats.embedded_tokens += sum(counts[batch])
                self._tally_into_stats()
        return vectors

    def _claim_across_processes(self, texts: list[str]) -> tuple[list[str], list[str], dict[str, np.ndarray]]:
        """With `claim_owner` set (cluster workers sharing one cache), split `texts` into those
        this process now holds, those another process is embedding, and the vectors of those
        another process stored since our lookup (its claim let go; counted as in flight elsewhere)."""
        if not self.claim_owner or not texts:
            return texts, [], {}
        held = set(self.cache.claim_many(texts, self.claim_owner, CLAIM_SECONDS))
        stored = self._cached([t for t in texts if t in held])
        if stored:
            self.cache.release_many(list(stored), self.claim_owner)
            self._count_elsewhere(list(stored))
        return [t for t in texts if t in held and t not in stored], [t for t in texts if t not in held], stored

    def _stored_elsewhere(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Wait for another process to store `texts`; those it let go of unstored are left out."""
        found, pending = {}, texts
        while pending:
            found.update(self._cached(pending))
            still = self.cache.claimed([t for t in pending if t not in found])
            found.update(self._cached([t for t in pending if t not in found and t not in still]))  # stored, then let go
            pending = [t for t in pending if t in still and t not in found]
            if pending:
                time.sleep(0.1)
        self._count_elsewhere(list(found))
        return found

    def _stored_since_lookup(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Of `texts`, those this run embedded after the lookup (a batch ahead, or another
        partition), read back from the cache: counted once, as sent, never paid for twice."""
        with self._lock:
            maybe = [t for t, seen in zip(texts, self._embedded.contains_many(texts)) if seen]
        return self._cached(maybe) if maybe else {}

    def _cached(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The cache's usable vectors for `texts`. An entry that is no usable vector is a miss,
        counted once however often it is read before the vector embedded again replaces it."""
        lookup = self.cache.lookup(texts)
        if lookup.bad:
            with self._lock:
                self.stats.bad_cache_entries += int(self._bad.add_many(lookup.bad).sum())
        return lookup.vectors

    def _count_elsewhere(self, texts: list[str]) -> None:
        if texts:
            hashes = hash64(texts)
            with self._lock:
                self._tally.add("elsewhere", hashes)
                self._tally_into_stats()

    def _tally_into_stats(self) -> None:  # under the lock
        counts = self._tally.counts
        self.stats.cache_hits, self.stats.embedded_chunks = counts["hit"], counts["sent"]
        self.stats.in_flight_elsewhere = counts["elsewhere"]

    def _claim(self, misses: list[str]) -> tuple[list[str], dict[str, threading.Event], threading.Event]:
        """Split misses into those this call embeds and those another partition is already
        embedding, so a text shared by concurrent partitions is still paid for once."""
        done = threading.Event()
        with self._lock:
            theirs = {t: self._in_flight[t] for t in misses if t in self._in_flight}
            mine = [t for t in misses if t not in theirs]
            self._in_flight.update(dict.fromkeys(mine, done))
        return mine, theirs, done

    def _release(self, mine: list[str], done: threading.Event) -> None:
        with self._lock:
            for text in mine:
                self._in_flight.pop(text, None)
        done.set()

    def add_counts(self, counters: dict[str, int], texts: np.ndarray, chunks: dict[str, np.ndarray]) -> None:
        """Add what a partition embedded in another process counted (`counts_to_merge` there):
        its counters, its distinct texts and its chunk tally by `hash64`, so that a text or a
        chunk it shares with other partitions counts once."""
        with self._lock:
            for name, value in counters.items():
                setattr(self.stats, name, getattr(self.stats, name) + value)
            self._count_texts(texts)
            self.stats.chunks += self._tally.merge(chunks)
            self._tally_into_stats()

    def counts_to_merge(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """This embedder's distinct texts and chunk tally, as hashes, for `add_counts` elsewhere."""
        with self._lock:
            return self._seen.hashes(), self._tally.export()

    def _count_texts(self, hashes: np.ndarray) -> None:  # under the lock
        self.stats.distinct_texts += int(self._seen.add_hashes(hashes).sum())

    def _count(self, raw_texts: list, rows: PreparedRows) -> None:
        """Count the rows, the texts not seen before and the chunks met for the first time: as
        cache hits where the cache held them (as sent where the Batch API had just embedded
        them); the others are counted when embedded."""
        chunks = list({c.text: None for chunks in rows.chunked.values() for c in chunks})
        texts, hashes = _hashes(list(rows.chunked)), _hashes(chunks)
        cached = np.array([text in rows.cached for text in chunks], dtype=bool)
        with self._lock:
            self.stats.rows += len(raw_texts)
            self.stats.null_texts += sum(1 for key in rows.keys if not key)
            self._count_texts(texts)
            first = self._tally.meet(hashes)
            self.stats.chunks += int(first.sum())
            found = hashes[first & cached]
            ahead = self._sent_ahead.contains_hashes(found)
            self._tally.add("sent", found[ahead])
            self._tally.add("hit", found[~ahead])
            self._tally_into_stats()


def _hashes(texts: list[str]) -> np.ndarray:
    return hash64(texts) if texts else np.zeros(0, dtype=np.int64)


def chunk_rows(raw_texts: list[str | None], max_tokens: int, overlap_tokens: int) -> PreparedRows:
    """Normalise each row, and chunk each distinct normalised text once."""
    normalised = [normalise_paragraphs(raw) if isinstance(raw, str) else [] for raw in raw_texts]
    keys = [" ".join(paragraphs) for paragraphs in normalised]
    distinct = {key: paragraphs for key, paragraphs in zip(keys, normalised) if key}
    return PreparedRows(keys, dict(zip(distinct, chunk_texts(list(distinct.values()), max_tokens, overlap_tokens))))


def pool_chunks(chunks: list[Chunk], vectors: dict[str, np.ndarray]) -> np.ndarray:
    """The token-weighted mean of the chunk vectors, re-normalised."""
    if len(chunks) == 1:  # most texts: the chunk's vector is the row's
        return vectors[chunks[0].text]
    weights = np.array([c.tokens for c in chunks], dtype=np.float32)
    return l2_normalise(weights @ np.stack([vectors[c.text] for c in chunks]))
