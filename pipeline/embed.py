"""Rows of raw text in, one vector per row out: normalise, dedupe, chunk, cache, embed, pool."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields

import numpy as np

from pipeline.cache import VectorCache
from pipeline.chunking import Chunk, chunk_texts
from pipeline.hashset import HashSet
from pipeline.providers.base import Embedder, l2_normalise
from pipeline.text import normalise_paragraphs


@dataclass
class RunStats:
    """What a run did, for the summary and the manifest."""

    rows: int = 0
    unchanged_rows: int = 0  # kept from the last run: their input files did not change
    null_texts: int = 0  # null, empty or whitespace-only: null vector, nothing sent
    distinct_texts: int = 0
    chunks: int = 0  # chunks of the distinct texts
    tokens: int = 0  # tokens in those chunks
    cache_hits: int = 0  # chunks answered by the cache
    embedded_chunks: int = 0
    embedded_tokens: int = 0
    requests: int = 0  # every attempt sent to the provider
    retries: dict = field(default_factory=dict)  # retried attempts by cause
    timed_out_tokens: int = 0  # in attempts that timed out and were resent: maybe billed twice
    batch_api: dict = field(default_factory=dict)  # openai-batch: batches, requests, inputs sent
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class EmbeddedText:
    """A normalised text, its chunks, their vectors and the pooled row vector."""

    chunks: list[Chunk]
    chunk_vectors: np.ndarray
    vector: np.ndarray


@dataclass(frozen=True)
class PreparedRows:
    """Rows ready to embed: each row's normalised text ("" when blank) and each distinct text's chunks."""

    keys: list[str]
    chunked: dict[str, list[Chunk]]


@dataclass
class TextEmbedder:
    """Embeds row texts, each distinct text once per run, reading and filling the cache."""

    embedder: Embedder
    cache: VectorCache
    max_tokens: int
    overlap_tokens: int
    stats: RunStats = field(default_factory=RunStats)
    _seen: HashSet = field(default_factory=HashSet, repr=False)  # distinct texts so far
    _in_flight: dict = field(default_factory=dict, repr=False)  # text -> Event, while being embedded
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # partitions run in threads

    def skip(self, rows: int, unchanged: bool = False) -> None:
        """Count rows kept without embedding: a part an earlier attempt finished, or (with
        `unchanged`) one kept from the last run because its input did not change."""
        with self._lock:
            self.stats.rows += rows
            self.stats.unchanged_rows += rows if unchanged else 0

    def prepare(self, raw_texts: list[str | None]) -> PreparedRows:
        """The CPU half, safe to run ahead in another thread: normalise, dedupe, chunk."""
        rows = chunk_rows(raw_texts, self.max_tokens, self.overlap_tokens)
        self._count(raw_texts, rows.keys, rows.chunked)
        return rows

    def missing_chunks(self, raw_texts: list[str | None]) -> dict[str, int]:
        """The chunks (text -> tokens) of these rows that the cache lacks; counts nothing."""
        rows = chunk_rows(raw_texts, self.max_tokens, self.overlap_tokens)
        chunks = {c.text: c.tokens for chunks in rows.chunked.values() for c in chunks}
        cached = self.cache.get_many(list(chunks))
        return {text: tokens for text, tokens in chunks.items() if text not in cached}

    def complete(self, rows: PreparedRows) -> list[EmbeddedText | None]:
        """The I/O half, in order: cache lookup, embed the misses, pool chunks into rows."""
        vectors = self._chunk_vectors({c.text: c.tokens for chunks in rows.chunked.values() for c in chunks})
        results = {key: _pool(chunks, vectors) for key, chunks in rows.chunked.items()}
        return [results[key] if key else None for key in rows.keys]

    def _chunk_vectors(self, token_counts: dict[str, int]) -> dict[str, np.ndarray]:
        texts = list(token_counts)
        vectors = self.cache.get_many(texts)
        claimed, theirs, done = self._claim([t for t in texts if t not in vectors])
        mine = claimed
        with self._lock:
            self.stats.cache_hits += len(vectors)
        try:
            if mine:  # another partition may have stored some between our lookup and our claim
                vectors.update(just_stored := self.cache.get_many(mine))
                mine = [t for t in mine if t not in just_stored]
            counts = [token_counts[t] for t in mine]
            store = lambda texts, fresh: self.cache.put_many(dict(zip(texts, fresh)))  # a stopped run resumes from here
            for batch, fresh in self.embedder.embed_iter(mine, counts, store):
                vectors.update(zip(mine[batch], fresh))
                with self._lock:
                    self.stats.embedded_chunks += len(fresh)
                    self.stats.embedded_tokens += sum(counts[batch])
        finally:
            self._release(claimed, done)
        for event in {id(e): e for e in theirs.values()}.values():
            event.wait()  # another partition is embedding these right now
        vectors.update(self.cache.get_many(list(theirs)))
        missing = [t for t in theirs if t not in vectors]  # its request failed: ours to do
        return vectors if not missing else {**vectors, **self._chunk_vectors({t: token_counts[t] for t in missing})}

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

    def _count(self, raw_texts: list, keys: list[str], chunked: dict[str, list[Chunk]]) -> None:
        with self._lock:
            self.stats.rows += len(raw_texts)
            self.stats.null_texts += sum(1 for key in keys if not key)
            for (key, chunks), new in zip(chunked.items(), self._seen.add_many(list(chunked))):
                if new:
                    self.stats.distinct_texts += 1
                    self.stats.chunks += len(chunks)
                    self.stats.tokens += sum(c.tokens for c in chunks)


def chunk_rows(raw_texts: list[str | None], max_tokens: int, overlap_tokens: int) -> PreparedRows:
    """Normalise each row, and chunk each distinct normalised text once."""
    normalised = [normalise_paragraphs(raw) if isinstance(raw, str) else [] for raw in raw_texts]
    keys = [" ".join(paragraphs) for paragraphs in normalised]
    distinct = {key: paragraphs for key, paragraphs in zip(keys, normalised) if key}
    return PreparedRows(keys, dict(zip(distinct, chunk_texts(list(distinct.values()), max_tokens, overlap_tokens))))


def _pool(chunks: list[Chunk], vectors: dict[str, np.ndarray]) -> EmbeddedText:
    """The token-weighted mean of the chunk vectors, re-normalised."""
    if len(chunks) == 1:  # most texts: the chunk's vector is the row's
        vector = vectors[chunks[0].text]
        return EmbeddedText(chunks, vector[None, :], vector)
    chunk_vectors = np.stack([vectors[c.text] for c in chunks])
    weights = np.array([c.tokens for c in chunks], dtype=np.float32)
    vector = l2_normalise(weights @ chunk_vectors)
    return EmbeddedText(chunks, chunk_vectors, vector)
