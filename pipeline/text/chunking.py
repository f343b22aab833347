"""Split a normalised text into token-bounded chunks at the most natural boundaries available.

Boundaries are tried in order: paragraph, sentence, word, and only then raw token windows.
Every chunk holds at most `max_tokens` cl100k_base tokens. Each chunk after the first opens
with up to `overlap_tokens` tokens of whole words from the end of the one before.

Each text is tokenised once. cl100k_base's pre-tokenizer starts a new token at every space,
so the tokens of any space-delimited span are the tokens that start inside it: counts come
from the token offsets, and only a chunk's first word is tokenised again (without the space
before it).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import tiktoken

from pipeline.config import ChunkingConfig
from pipeline.text.tokens import cl100k_base, count_tokens, encode_arrays

log = logging.getLogger("embedpipe")
_SENTENCE_END = re.compile(r"[.!?…](?=\s)")  # a cut falls at the match's end; a lookbehind scans twice as slowly
_WORD_GAP = re.compile(r"\s+")
_SPLITTERS = (_SENTENCE_END,)  # below the last of these, runs of words (`_word_runs`)


@dataclass(frozen=True)
class Chunk:
    """A piece of a normalised text: `text == full_text[start:end]`."""

    text: str
    start: int
    end: int
    counted: int | None = None  # None: a whole text short enough never to need counting

    @property
    def tokens(self) -> int:
        """cl100k_base tokens in `text`; counted now if the chunker had no need to."""
        return self.counted if self.counted is not None else count_tokens(self.text)


def token_counts(chunks: list[Chunk]) -> list[int]:
    """Each chunk's tokens; those the chunker left uncounted are counted together, in one pass."""
    fresh = iter([len(tokens) for tokens in encode_arrays([c.text for c in chunks if c.counted is None])])
    return [c.counted if c.counted is not None else next(fresh) for c in chunks]


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    tokens: int


def chunk_limits(chunking: ChunkingConfig, model_limit: int, model: str) -> tuple[int, int]:
    """`chunking.max_tokens` within the model's input limit; the overlap at most half of it."""
    max_tokens = min(chunking.max_tokens, model_limit)
    overlap = min(chunking.overlap_tokens, max_tokens // 2)
    if max_tokens < chunking.max_tokens:
        log.warning("chunking.max_tokens lowered to %d, the input limit of %s", max_tokens, model)
    if overlap < chunking.overlap_tokens:
        log.warning("chunking.overlap_tokens lowered to %d, half of max_tokens", overlap)
    return max_tokens, overlap


def chunk_texts(
    paragraph_lists: list[list[str]],
    max_tokens: int,
    overlap_tokens: int = 0,
    encoding: tiktoken.Encoding | None = None,
) -> list[list[Chunk]]:
    """`chunk_by_tokens` for many texts, tokenised together in one batch call."""
    encoding = encoding or cl100k_base()
    texts = [" ".join(paragraphs) for paragraphs in paragraph_lists]
    # A token is at least one UTF-8 byte: a text of at most max_tokens bytes is one chunk
    # without tokenising it, and most rows of most tables are such texts.
    short = [utf8_length(text) <= max_tokens for text in texts]
    token_lists = iter(encode_arrays([text for text, fits in zip(texts, short) if not fits], encoding))
    return [
        ([Chunk(text, 0, len(text))] if text else [])
        if fits
        else _chunk_one(text, paragraphs, next(token_lists), max_tokens, overlap_tokens, encoding)
        for text, paragraphs, fits in zip(texts, paragraph_lists, short)
    ]


def utf8_length(text: str) -> int:
    """The bytes of `text` in UTF-8, without encoding an ASCII text."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def chunk_by_tokens(
    paragraphs: list[str], max_tokens: int, overlap_tokens: int = 0, encoding: tiktoken.Encoding | None = None
) -> list[Chunk]:
    """Chunks of `" ".join(paragraphs)`, each at most `max_tokens` tokens; [] for no text."""
    return chunk_texts([paragraphs], max_tokens, overlap_tokens, encoding)[0]


def _chunk_one(
    text: str, paragraphs: list[str], tokens: np.ndarray, max_tokens: int, overlap_tokens: int, enc
) -> list[Chunk]:
    if not text:
        return []
    if len(tokens) <= max_tokens:
        return [Chunk(text, 0, len(text), len(tokens))]
    index = _TokenIndex(text, tokens, enc)
    spans = []
    for start, end in _paragraph_bounds(paragraphs):
        spans.extend(_split(index, start, end, 0, max_tokens, max_tokens - overlap_tokens))
    return _pack(index, spans, max_tokens, overlap_tokens)


class _TokenIndex:
    """Where each token of `text` starts, to count the tokens of any span without re-encoding."""

    def __init__(self, text: str, tokens: np.ndarray, enc: tiktoken.Encoding):
        self.text, self.enc = text, enc
        byte_starts = np.concatenate(([0], np.cumsum(_token_byte_lengths(enc)[tokens])[:-1]))
        if not text.isascii():  # map bytes to characters; continuation bytes belong to their character
            raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
            byte_starts = (np.cumsum((raw & 0xC0) != 0x80) - 1)[byte_starts]
        self.starts = byte_starts.tolist()  # bisect on a list beats numpy on scalars
        self._word_starts: list[int] | None = None

    def count(self, start: int, end: int) -> int:
        """Tokens starting in text[start:end]: exact when both ends are at spaces or the text's ends."""
        return bisect_left(self.starts, end) - bisect_left(self.starts, start)

    def word_starts(self, start: int, end: int) -> list[int]:
        """Where the words after the first in text[start:end] begin."""
        if self._word_starts is None:  # normalised text: every gap is one space
            codes = np.frombuffer(self.text.encode("utf-32-le"), dtype=np.uint32)
            self._word_starts = (np.flatnonzero(codes == 32) + 1).tolist()
        words = self._word_starts
        return words[bisect_right(words, start) : bisect_left(words, end)]

    def chunk(self, start: int, end: int) -> Chunk:
        """text[start:end] without leading space, with its exact token count."""
        while start < end and self.text[start].isspace():
            start += 1
        gap = _WORD_GAP.search(self.text, start, end)
        first_end = gap.start() if gap else end
        tokens = len(self.enc.encode_ordinary(self.text[start:first_end])) + self.count(first_end, end)
        return Chunk(self.text[start:end], start, end, tokens)


@functools.cache
def _token_byte_lengths(enc: tiktoken.Encoding) -> np.ndarray:
    lengths = np.zeros(enc.n_vocab, dtype=np.int64)
    for token in range(enc.n_vocab):
        with contextlib.suppress(KeyError):  # ids between the ordinary and the special tokens
            lengths[token] = len(enc.decode_single_token_bytes(token))
    return lengths


def _paragraph_bounds(paragraphs: list[str]) -> list[tuple[int, int]]:
    # Each span after the first starts at the space before it: token counts then add up.
    bounds, offset = [], 0
    for paragraph in paragraphs:
        start = offset - 1 if offset else 0
        bounds.append((start, offset + len(paragraph)))
        offset += len(paragraph) + 1
    return bounds


def _split(index: _TokenIndex, start: int, end: int, level: int, max_tokens: int, run_tokens: int) -> list[_Span]:
    """Spans of at most `max_tokens` at the coarsest boundaries that allow it. Runs of words
    are cut to `run_tokens`, leaving room for the overlap the next chunk opens with."""
    tokens = index.count(start, end)
    if tokens <= max_tokens:
        return [_Span(start, end, tokens)]
    if level == len(_SPLITTERS):
        return _word_runs(index, start, end, run_tokens)
    cuts = [m.end() for m in _SPLITTERS[level].finditer(index.text, start, end) if start < m.end() < end]
    spans = []
    for a, b in pairwise([start, *cuts, end]):
        count = index.count(a, b)
        spans.extend(
            [_Span(a, b, count)] if count <= max_tokens else _split(index, a, b, level + 1, max_tokens, run_tokens)
        )
    return spans


def _word_runs(index: _TokenIndex, start: int, end: int, max_tokens: int) -> list[_Span]:
    """Cut a run of words into the fewest spans of at most `max_tokens` tokens, each ending at
    a word boundary; a single word too long for that falls back to token windows."""
    bounds = [w - 1 for w in index.word_starts(start, end)] + [end]  # the spaces before words, then the end
    spans, pos = [], start
    while pos < end:
        lo = bisect_right(bounds, pos)
        hi, best = len(bounds) - 1, None
        while lo <= hi:  # the farthest boundary that still fits: counts grow with the end
            mid = (lo + hi) // 2
            if index.count(pos, bounds[mid]) <= max_tokens:
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
        if best is None:  # the next word alone is too long
            stop = bounds[bisect_right(bounds, pos)]
            spans.extend(_token_windows(index, pos, stop, max_tokens))
            pos = stop
            continue
        spans.append(_Span(pos, bounds[best], index.count(pos, bounds[best])))
        pos = bounds[best]
    return spans


def _token_windows(index: _TokenIndex, start: int, end: int, max_tokens: int) -> list[_Span]:
    """Windows of at most `max_tokens` tokens over a run with no usable boundary, cut between
    characters. Token boundaries inside a run are not guaranteed, so each window is re-counted."""
    text, enc = index.text, index.enc
    while start < end and text[start].isspace():
        start += 1
    first = bisect_left(index.starts, start)
    windows = []
    while start < end:
        take = max_tokens
        while True:
            cut = int(index.starts[first + take]) if first + take < len(index.starts) else len(text)
            cut = min(max(cut, start + 1), end)
            count = len(enc.encode_ordinary(text[start:cut]))
            if count <= max_tokens or take == 1:
                break
            take = max(1, take - max(1, (count - max_tokens)))
        windows.append(_Span(start, cut, count))
        start = cut
        first = bisect_left(index.starts, start)
    return windows


def _pack(index: _TokenIndex, spans: list[_Span], max_tokens: int, overlap_tokens: int) -> list[Chunk]:
    """Greedily fill chunks with whole spans; each chunk after the first opens with the
    last words of the one before (at most `overlap_tokens` of them)."""
    chunks, i, lead = [], 0, None
    while i < len(spans):
        start = spans[i].start if lead is None else lead
        total = 0 if lead is None else index.count(lead, spans[i].start)
        j = i
        while j < len(spans) and total + spans[j].tokens <= max_tokens:
            total += spans[j].tokens
            j += 1
        chunk = index.chunk(start, spans[j - 1].end) if j > i else None
        while chunk and chunk.tokens > max_tokens and j - i > 1:  # the stripped first word grew
            j -= 1
            chunk = index.chunk(start, spans[j - 1].end)
        if chunk is None or chunk.tokens > max_tokens:
            if lead is not None:  # the overlap left no room: this chunk goes without it
                lead = None
            else:  # a lone span that grew once its leading space was stripped
                spans[i : i + 1] = _token_windows(index, spans[i].start, spans[i].end, max_tokens)
            continue
        chunks.append(chunk)
        i = j
        lead = _overlap_start(index, chunk.start, chunk.end, overlap_tokens) if overlap_tokens else None
    return chunks


def _overlap_start(index: _TokenIndex, start: int, end: int, overlap_tokens: int) -> int | None:
    """The earliest word start in text[start:end] whose tail to `end` fits in `overlap_tokens`."""
    words = index.word_starts(start, end)
    lo, hi = 0, len(words)
    while lo < hi:  # tails shrink as the word start moves right: binary search on cheap counts
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if index.count(words[mid], end) <= overlap_tokens else (mid + 1, hi)
    for w in words[lo:]:  # those counts include the first word's space: confirm exactly
        if index.chunk(w, end).tokens <= overlap_tokens:
            return w
    return None
