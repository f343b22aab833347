"""Rows of raw text in, one vector per row out: normalise, dedupe, chunk, cache, embed, pool."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from pipeline.cache.claims import Claims
from pipeline.cache.vectors import VectorCache
from pipeline.providers.base import Embedder, l2_normalise
from pipeline.run.counts import RunCounter, RunStats
from pipeline.text.chunking import Chunk, chunk_texts, token_counts
from pipeline.text.normalise import normalise_paragraphs


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


@dataclass
class TextEmbedder:
    """Embeds row texts, each distinct text once per run, reading and filling the cache:
    preparation (`prepare`, no network) and embedding (`complete`). What it met and did is
    counted in `counts`; texts other partitions or processes are embedding are left to them."""

    embedder: Embedder
    cache: VectorCache
    max_tokens: int
    overlap_tokens: int
    claim_owner: str | None = None  # set where other processes share the cache: claims texts there too
    counts: RunCounter = field(default_factory=RunCounter)
    claims: Claims = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.claims = Claims(self.cache, self._cached, self.claim_owner)

    @property
    def stats(self) -> RunStats:
        """What the run did so far."""
        return self.counts.stats

    def prepare(self, raw_texts: list[str | None]) -> PreparedRows:
        """All that needs no network, safe to run ahead in another thread: normalise, dedupe,
        chunk, look the chunks up in the cache and count the tokens of those it lacks."""
        rows = self.looked_up(chunk_rows(raw_texts, self.max_tokens, self.overlap_tokens))
        chunks = list({c.text: None for chunks in rows.chunked.values() for c in chunks})
        cached = np.array([text in rows.cached for text in chunks], dtype=bool)
        blank = sum(1 for key in rows.keys if not key)
        self.counts.met(len(raw_texts), blank, list(rows.chunked), chunks, cached)
        return rows

    def send_ahead(self, raw_texts: list[str | None]) -> dict[str, int]:
        """The chunks (text -> tokens) of these rows that the cache lacks, for the Batch API to
        embed before the run reads them again: those the cache holds by then count as sent."""
        misses = self.looked_up(chunk_rows(raw_texts, self.max_tokens, self.overlap_tokens)).misses
        if misses:
            self.counts.sent_ahead(list(misses))
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
        claimed, theirs, done = self.claims.claim_here(list(misses))
        try:
            vectors = self._stored_since_lookup(claimed)
            mine, elsewhere, stored = self.claims.claim_across([t for t in claimed if t not in vectors])
            self.counts.elsewhere(list(stored))
            vectors.update(stored)
            try:
                vectors.update(self._embed(mine, [misses[t] for t in mine]))
            finally:
                self.claims.release_across(mine)
            found = self.claims.stored_elsewhere(elsewhere)
            self.counts.elsewhere(list(found))
            vectors.update(found)
        finally:
            self.claims.release_here(claimed, done)
        for event in {id(e): e for e in theirs.values()}.values():
            event.wait()  # another partition is embedding these right now
        vectors.update(self._cached(list(theirs)))  # counted by the partition that embedded them
        missing = {t: misses[t] for t in [*theirs, *elsewhere] if t not in vectors}  # its request failed: ours to do
        return vectors if not missing else {**vectors, **self._embedded_vectors(missing)}

    def _embed(self, texts: list[str], counts: list[int]) -> dict[str, np.ndarray]:
        vectors: dict[str, np.ndarray] = {}

        def store(batch: list[str], fresh: np.ndarray) -> None:  # a stopped run resumes from here
            # Stored before the next request leaves: a full disk then loses at most the answers in flight.
            self.cache.put_many(dict(zip(batch, fresh)))

        for batch, fresh in self.embedder.embed_iter(texts, counts, store):
            vectors.update(zip(texts[batch], fresh))
            self.counts.embedded(texts[batch], sum(counts[batch]))
        return vectors

    def _stored_since_lookup(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Of `texts`, those this run embedded after the lookup (a batch ahead, or another
        partition), read back from the cache: counted once, as sent, never paid for twice."""
        maybe = [t for t, seen in zip(texts, self.counts.were_embedded(texts)) if seen]
        return self._cached(maybe) if maybe else {}

    def _cached(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The cache's usable vectors for `texts`. An entry that is no usable vector is a miss,
        counted once however often it is read before the vector embedded again replaces it."""
        lookup = self.cache.lookup(texts)
        if lookup.bad:
            self.counts.bad_entries(lookup.bad)
        return lookup.vectors


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
