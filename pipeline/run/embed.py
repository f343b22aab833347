"""Rows of raw text in, one vector per row out: normalise, dedupe, chunk, cache, embed, pool."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.arrow_strings import from_numpy, int_values
from pipeline.cache.claims import Claims, ClaimStore
from pipeline.cache.vectors import Hits, VectorCache
from pipeline.hashset import hash64
from pipeline.providers.base import Embedder
from pipeline.run.counts import RunCounter, RunStats
from pipeline.text.chunking import Chunk, chunk_texts
from pipeline.text.normalise import normalise_paragraphs, normalised_array
from pipeline.text.tokens import count_many
from pipeline.unit_vectors import l2_normalise


@dataclass(frozen=True)
class EmbeddedText:
    """A normalised text, its chunks and their vectors: a row of the chunk table."""

    chunks: list[Chunk]
    chunk_vectors: np.ndarray


@dataclass(frozen=True)
class PreparedRows:
    """Rows ready to embed: the distinct normalised texts, which of them each row holds, and
    the chunks of those longer than one chunk (a text of one chunk is its own chunk, and costs
    no object of its own); once looked up, the vectors the cache held for `chunk_texts()`, by
    position, and the tokens of each chunk it lacked."""

    texts: list[str]
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # -1 where blank
    text_array: pa.Array | None = None  # `texts` as Arrow strings, where they came from Arrow: hashed there
    long: dict[str, list[Chunk]] = field(default_factory=dict)
    cached: Hits = field(default_factory=lambda: Hits(np.zeros(0, dtype=bool), np.zeros((0, 0), dtype=np.float32)))
    misses: dict[str, int] = field(default_factory=dict)

    @property
    def blank(self) -> int:
        """Rows whose text is null, empty or whitespace."""
        return int(np.count_nonzero(self.rows < 0))

    def chunks_of(self, text: str) -> list[Chunk]:
        """The chunks of one of `texts`."""
        return self.long.get(text) or [Chunk(text, 0, len(text))]

    def chunk_texts(self) -> list[str]:
        """Every distinct chunk of the distinct texts."""
        if not self.long:  # most batches: every text one chunk
            return self.texts
        return list(dict.fromkeys(c for text in self.texts for c in self._chunk_strings(text)))

    def chunk_hashes(self) -> np.ndarray:
        """`hash64` of each of `chunk_texts()`: of the Arrow strings where each text is its one chunk."""
        if self.text_array is not None and not self.long:
            return hash64(self.text_array)
        return hash64(self.chunk_texts()) if self.texts else np.zeros(0, dtype=np.int64)

    def known_tokens(self) -> dict[str, int]:
        """The chunks whose tokens the chunker counted already."""
        return {c.text: c.counted for chunks in self.long.values() for c in chunks if c.counted is not None}

    def _chunk_strings(self, text: str) -> list[str]:
        return [c.text for c in self.long[text]] if text in self.long else [text]


@dataclass(frozen=True)
class RowVectors:
    """Each row's vector (zeros where its text is blank), which rows have one, and the chunk
    vectors they were pooled from (a row each of `rows.chunk_texts()`)."""

    matrix: np.ndarray
    present: np.ndarray
    rows: PreparedRows
    chunk_matrix: np.ndarray

    def embedded_texts(self) -> list[EmbeddedText | None]:
        """Per row, its chunks and their vectors (None where blank): the chunk table's rows."""
        at = {chunk: i for i, chunk in enumerate(self.rows.chunk_texts())}
        texts = []
        for key in self.rows.texts:
            chunks = self.rows.chunks_of(key)
            texts.append(EmbeddedText(chunks, self.chunk_matrix[[at[c.text] for c in chunks]]))
        return [texts[i] if i >= 0 else None for i in self.rows.rows.tolist()]


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
    claim_store: ClaimStore | None = None  # where those claims are kept: the cache unless set
    counts: RunCounter = field(default_factory=RunCounter)
    claims: Claims = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.claims = Claims(self.cache, self._cached, self.claim_owner, self.claim_store)

    @property
    def stats(self) -> RunStats:
        """What the run did so far."""
        return self.counts.stats

    def prepare(self, raw_texts: list[str | None] | pa.Array | pa.ChunkedArray) -> PreparedRows:
        """All that needs no network, safe to run ahead in another thread: normalise, dedupe,
        chunk, look the chunks up in the cache and count the tokens of those it lacks."""
        rows = self.looked_up(chunk_rows(raw_texts, self.max_tokens, self.overlap_tokens))
        chunks = rows.chunk_texts()
        found, hashes = rows.cached.found, rows.chunk_hashes()
        self.counts.met(len(rows.rows), rows.blank, rows.texts, chunks, found, rows.long, hashes)
        return rows

    def send_ahead(self, raw_texts: list[str | None] | pa.Array | pa.ChunkedArray) -> dict[str, int]:
        """The chunks (text -> tokens) of these rows that the cache lacks, for the Batch API to
        embed before the run reads them again: those the cache holds by then count as sent."""
        misses = self.looked_up(chunk_rows(raw_texts, self.max_tokens, self.overlap_tokens)).misses
        if misses:
            self.counts.sent_ahead(list(misses))
        return misses

    def looked_up(self, rows: PreparedRows) -> PreparedRows:
        """`rows` with the cache's vectors for their chunks and the token counts of the others
        (counted only now: most chunks of most runs are cached)."""
        chunks = rows.chunk_texts()
        cached = self._hits(chunks)
        misses = [chunks[i] for i in np.flatnonzero(~cached.found).tolist()]
        if misses:
            self.embedder.expect_requests()
        return replace(rows, cached=cached, misses=dict(zip(misses, _tokens(misses, rows.known_tokens()))))

    def complete(self, rows: PreparedRows) -> RowVectors:
        """The network half: embed the chunks the cache lacked, pool chunks into row vectors."""
        chunks, matrix = rows.chunk_texts(), rows.cached.matrix
        blank = np.zeros((1, self.embedder.dimensions), dtype=np.float32)
        if rows.misses:  # the chunks' vectors: the cache's where it had them, else just embedded
            embedded, found = self._embedded_vectors(rows.misses), rows.cached.found
            matrix = np.empty((len(chunks), blank.shape[1]), dtype=np.float32)
            matrix[found] = rows.cached.matrix
            lacked = np.flatnonzero(~found)
            matrix[lacked] = np.stack([embedded[chunks[i]] for i in lacked.tolist()])
        if rows.long:  # some texts pool several chunks
            vectors, long = dict(zip(chunks, matrix)), rows.long
            pooled = [vectors[key] if key not in long else pool_chunks(long[key], vectors) for key in rows.texts]
            texts_matrix = np.concatenate(pooled).reshape(-1, blank.shape[1])  # 3x np.stack's pace
        else:  # each text its one chunk, in the same order
            texts_matrix = matrix
        # The distinct texts' vectors, then a blank row's: each row takes its text's (-1: the blank).
        table = np.concatenate([texts_matrix, blank])
        return RowVectors(table[rows.rows], rows.rows >= 0, rows, matrix)

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
        """The cache's usable vectors for `texts`, text -> vector."""
        unique = list(dict.fromkeys(texts))
        return self._hits(unique).vectors(unique)

    def _hits(self, texts: list[str]) -> Hits:
        """The cache's usable vectors for distinct `texts`, by position. An entry that is no usable
        vector is a miss, counted once however often it is read before the vector embedded again
        replaces it."""
        hits = self.cache.hits(texts)
        if hits.bad:
            self.counts.bad_entries(hits.bad)
        return hits


def chunk_rows(
    raw_texts: list[str | None] | pa.Array | pa.ChunkedArray, max_tokens: int, overlap_tokens: int
) -> PreparedRows:
    """Normalise each row, and chunk each distinct normalised text once: those of at most
    `max_tokens` UTF-8 bytes are one chunk without tokenising (a token is at least a byte).
    Rows are normalised and deduplicated in Arrow: a row costs no Python object, a distinct text one."""
    keys = normalised_array(raw_texts)
    distinct = pc.dictionary_encode(keys)  # no nulls: `int_values` reads the indices without pandas
    rows, strings = int_values(distinct.indices).astype(np.int64), distinct.dictionary
    lengths = int_values(pc.binary_length(strings))
    blank = np.flatnonzero(lengths == 0)
    if len(blank):  # the blank text is no text: its rows are -1
        at = int(blank[0])
        rows[rows == at] = -1
        rows[rows > at] -= 1
        strings = pa.concat_arrays([strings[:at], strings[at + 1 :]])
        lengths = np.delete(lengths, at)
    texts = strings.to_pylist()  # in the order rows first hold them
    long = np.flatnonzero(lengths > max_tokens)
    if not len(long):  # most batches: every text one chunk
        return PreparedRows(texts, rows, strings)
    # The chunker's boundaries are the raw text's paragraphs: of the last row holding each text.
    held, first_from_end = np.unique(rows[::-1], return_index=True)
    last = len(rows) - 1 - first_from_end[np.searchsorted(held, long)]
    raws = _rows_of(raw_texts, last)
    chunks = chunk_texts([normalise_paragraphs(raw) for raw in raws], max_tokens, overlap_tokens)
    return PreparedRows(texts, rows, strings, {texts[i]: c for i, c in zip(long.tolist(), chunks)})


def _rows_of(raw_texts: list[str | None] | pa.Array | pa.ChunkedArray, indices: np.ndarray) -> list[str | None]:
    if isinstance(raw_texts, (pa.Array, pa.ChunkedArray)):
        return raw_texts.take(from_numpy(indices)).to_pylist()  # `pa.array` of a list would import pandas
    return [raw_texts[i] for i in indices.tolist()]


def _tokens(texts: list[str], known: dict[str, int]) -> list[int]:
    """Each chunk's tokens: as the chunker counted them, or counted now, together."""
    fresh = iter(count_many([text for text in texts if text not in known]))
    return [known[text] if text in known else next(fresh) for text in texts]


def pool_chunks(chunks: list[Chunk], vectors: dict[str, np.ndarray]) -> np.ndarray:
    """The token-weighted mean of the chunk vectors, re-normalised."""
    if len(chunks) == 1:  # most texts: the chunk's vector is the row's
        return vectors[chunks[0].text]
    weights = np.array([c.tokens for c in chunks], dtype=np.float32)
    return l2_normalise(weights @ np.stack([vectors[c.text] for c in chunks]))
