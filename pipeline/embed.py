"""Rows of raw text in, one vector per row out: normalise, dedupe, chunk, cache, embed, pool."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, fields, replace

import numpy as np

from pipeline.cache import VectorCache
from pipeline.chunking import Chunk, chunk_texts, token_counts
from pipeline.hashset import HashSet, hash64
from pipeline.providers.base import Embedder, l2_normalise
from pipeline.text import normalise_paragraphs


@dataclass
class RunStats:
    """What a run did, for the summary and the manifest."""

    rows: int = 0
    unchanged_rows: int = 0  # kept from the last run: their input files did not change
    reused_rows: int = 0  # in changed files, rows equal to the last run's: its vectors kept
    null_texts: int = 0  # null, empty or whitespace-only: null vector, nothing sent
    distinct_texts: int = 0
    chunks: int = 0  # chunks of the distinct texts
    cache_hits: int = 0  # chunks answered by the cache
    bad_cache_entries: int = 0  # cached vectors not finite, zero or the wrong size: embedded again
    embedded_chunks: int = 0
    embedded_tokens: int = 0
    requests: int = 0  # every attempt sent to the provider
    retries: dict = field(default_factory=dict)  # retried attempts by cause
    rate_limited: int = 0  # answers that were 429 rate_limit_exceeded, all retried
    timed_out_tokens: int = 0  # in attempts that timed out and were resent: maybe billed twice
    batch_api: dict = field(default_factory=dict)  # openai-batch: batches, requests, inputs sent
    cost_usd: float | None = None  # tokens sent at the price table's price; None: no price known
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


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
        texts = {key: EmbeddedText(chunks, np.stack([self.chunk_vectors[c.text] for c in chunks])) for key, chunks in self.rows.chunked.items()}
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
    distinct_log: list | None = None  # set to a list to keep (hashes, chunk counts) of each new distinct text
    _seen: HashSet = field(default_factory=HashSet, repr=False)  # distinct texts so far
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
        self._count(raw_texts, rows.keys, rows.chunked)
        return rows

    def missing_chunks(self, raw_texts: list[str | None]) -> dict[str, int]:
        """The chunks (text -> tokens) of these rows that the cache lacks; counts nothing."""
        return self.looked_up(chunk_rows(raw_texts, self.max_tokens, self.overlap_tokens)).misses

    def looked_up(self, rows: PreparedRows) -> PreparedRows:
        """`rows` with the cache's vectors for their chunks and the token counts of the others
        (counted only now: most chunks of most runs are cached)."""
        chunks = {c.text: c for chunks in rows.chunked.values() for c in chunks}
        cached = self._cached(list(chunks))
        misses = [chunk for text, chunk in chunks.items() if text not in cached]
        return replace(rows, cached=cached, misses=dict(zip((c.text for c in misses), token_counts(misses))))

    def complete(self, rows: PreparedRows) -> RowVectors:
        """The network half: embed the chunks the cache lacked, pool chunks into row vectors."""
        self._hits(len(rows.cached))
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
        vectors.update(theirs_stored := self._cached(list(theirs)))
        self._hits(len(theirs_stored))
        missing = {t: misses[t] for t in [*theirs, *elsewhere] if t not in vectors}  # its request failed: ours to do
        return vectors if not missing else {**vectors, **self._embedded_vectors(missing)}

    def _embed(self, texts: list[str], counts: list[int]) -> dict[str, np.ndarray]:
        vectors = {}
        store = lambda batch, fresh: self.cache.put_many(dict(zip(batch, fresh)))  # a stopped run resumes from here
        for batch, fresh in self.embedder.embed_iter(texts, counts, store):
            vectors.update(zip(texts[batch], fresh))
            with self._lock:
                self._embedded.add_many(texts[batch])
                self.stats.embedded_chunks += len(fresh)
                self.stats.embedded_tokens += sum(counts[batch])
        return vectors

    def _claim_across_processes(self, texts: list[str]) -> tuple[list[str], list[str], dict[str, np.ndarray]]:
        """With `claim_owner` set (cluster workers sharing one cache), split `texts` into those
        this process now holds, those another process is embedding, and the vectors of those
        another process stored since our lookup (its claim let go; counted as cache hits)."""
        if not self.claim_owner or not texts:
            return texts, [], {}
        held = set(self.cache.claim_many(texts, self.claim_owner, CLAIM_SECONDS))
        stored = self._cached([t for t in texts if t in held])
        if stored:
            self.cache.release_many(list(stored), self.claim_owner)
            self._hits(len(stored))
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
        self._hits(len(found))
        return found

    def _stored_since_lookup(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Of `texts`, those this run embedded after the lookup (a batch ahead, or another
        partition), read back from the cache: counted as cache hits, never paid for twice."""
        with self._lock:
            maybe = [t for t, seen in zip(texts, self._embedded.contains_many(texts)) if seen]
        found = self._cached(maybe) if maybe else {}
        self._hits(len(found))
        return found

    def _cached(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The cache's usable vectors for `texts`. An entry that is no usable vector is a miss,
        counted once however often it is read before the vector embedded again replaces it."""
        lookup = self.cache.lookup(texts)
        if lookup.bad:
            with self._lock:
                self.stats.bad_cache_entries += int(self._bad.add_many(lookup.bad).sum())
        return lookup.vectors

    def _hits(self, chunks: int) -> None:
        with self._lock:
            self.stats.cache_hits += chunks

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

    def add_counts(self, counters: dict[str, int], hashes: np.ndarray, chunk_counts: np.ndarray) -> None:
        """Add what a partition embedded in another process counted: its counters, and its
        distinct texts by `hash64`, so a text that partition shares with others counts once."""
        with self._lock:
            for name, value in counters.items():
                setattr(self.stats, name, getattr(self.stats, name) + value)
        self.count_distinct(hashes, chunk_counts)

    def count_distinct(self, hashes: np.ndarray, chunk_counts: np.ndarray) -> None:
        """Count the texts (by `hash64`) this run had not seen, and their chunks. Partitions
        embedded in other processes report theirs here, so a text they share counts once."""
        with self._lock:
            new = self._seen.add_hashes(hashes)
            self.stats.distinct_texts += int(new.sum())
            self.stats.chunks += int(chunk_counts[new].sum())
            if self.distinct_log is not None:
                self.distinct_log.append((hashes[new], chunk_counts[new]))

    def _count(self, raw_texts: list, keys: list[str], chunked: dict[str, list[Chunk]]) -> None:
        with self._lock:
            self.stats.rows += len(raw_texts)
            self.stats.null_texts += sum(1 for key in keys if not key)
        self.count_distinct(hash64(list(chunked)), np.fromiter(map(len, chunked.values()), dtype=np.int64, count=len(chunked)))


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
