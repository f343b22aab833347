"""Split a normalised text into token-bounded chunks at the most natural boundaries available.

Boundaries are tried in order: paragraph, sentence, word, and only then raw token windows.
Every chunk holds at most `max_tokens` cl100k_base tokens. Each chunk after the first opens
with up to `overlap_tokens` tokens of whole words from the end of the one before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise

import tiktoken

from pipeline.tokens import cl100k_base

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
_WORD_GAP = re.compile(r"\s+")
_SPLITTERS = (_SENTENCE_END, _WORD_GAP)


@dataclass(frozen=True)
class Chunk:
    """A piece of a normalised text: `text == full_text[start:end]`."""

    text: str
    start: int
    end: int
    tokens: int


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    tokens: int


def chunk_by_tokens(
    paragraphs: list[str],
    max_tokens: int,
    overlap_tokens: int = 0,
    encoding: tiktoken.Encoding | None = None,
) -> list[Chunk]:
    """Chunks of `" ".join(paragraphs)`, each at most `max_tokens` tokens; [] for no text."""
    encoding = encoding or cl100k_base()
    text = " ".join(paragraphs)
    if not text:
        return []
    whole = len(encoding.encode_ordinary(text))
    if whole <= max_tokens:
        return [Chunk(text, 0, len(text), whole)]
    spans = []
    for start, end in _paragraph_bounds(paragraphs):
        spans.extend(_split(text, start, end, 0, max_tokens, encoding))
    return _pack(text, spans, max_tokens, overlap_tokens, encoding)


def _paragraph_bounds(paragraphs: list[str]) -> list[tuple[int, int]]:
    # Each span after the first starts at the space before it: token counts then add up.
    bounds, offset = [], 0
    for paragraph in paragraphs:
        start = offset - 1 if offset else 0
        bounds.append((start, offset + len(paragraph)))
        offset += len(paragraph) + 1
    return bounds


def _split(text: str, start: int, end: int, level: int, max_tokens: int, enc) -> list[_Span]:
    tokens = len(enc.encode_ordinary(text[start:end]))
    if tokens <= max_tokens:
        return [_Span(start, end, tokens)]
    if level == len(_SPLITTERS):
        return _token_windows(text, start, end, max_tokens, enc)
    cuts = [m.start() for m in _SPLITTERS[level].finditer(text, start, end) if m.start() > start]
    spans = []
    for a, b in pairwise([start, *cuts, end]):
        spans.extend(_split(text, a, b, level + 1, max_tokens, enc))
    return spans


def _token_windows(text: str, start: int, end: int, max_tokens: int, enc) -> list[_Span]:
    """Windows of at most `max_tokens` tokens over a run with no usable boundary, cut between characters."""
    while start < end and text[start].isspace():
        start += 1
    windows = []
    while start < end:
        piece = text[start : min(end, start + 32 * max_tokens)]  # no token spans more characters
        tokens = enc.encode_ordinary(piece)
        if len(tokens) <= max_tokens:
            windows.append(_Span(start, start + len(piece), len(tokens)))
            start += len(piece)
            continue
        take = max_tokens
        while True:
            width = _chars_in_tokens(enc, tokens[:take], piece)
            count = len(enc.encode_ordinary(piece[:width]))
            if width and count <= max_tokens or take == 1:
                break
            take -= 1
        windows.append(_Span(start, start + width, count))
        start += width
    return windows


def _chars_in_tokens(enc, tokens: list[int], piece: str) -> int:
    """How many whole characters of `piece` the bytes of `tokens` cover."""
    size = sum(len(enc.decode_single_token_bytes(t)) for t in tokens)
    return len(piece.encode("utf-8")[:size].decode("utf-8", errors="ignore"))


def _pack(text: str, spans: list[_Span], max_tokens: int, overlap_tokens: int, enc) -> list[Chunk]:
    """Greedily fill chunks with whole spans; each chunk after the first opens with the
    last words of the one before (at most `overlap_tokens` of them)."""
    chunks, i, lead = [], 0, None
    while i < len(spans):
        start = spans[i].start if lead is None else lead
        total = 0 if lead is None else len(enc.encode_ordinary(text[lead : spans[i].start]))
        j = i
        while j < len(spans) and total + spans[j].tokens <= max_tokens:
            total += spans[j].tokens
            j += 1
        chunk = _make_chunk(text, start, spans[j - 1].end, enc) if j > i else None
        while chunk and chunk.tokens > max_tokens and j - i > 1:  # joining shifted a token boundary
            j -= 1
            chunk = _make_chunk(text, start, spans[j - 1].end, enc)
        if chunk is None or chunk.tokens > max_tokens:
            if lead is not None:  # the overlap left no room: this chunk goes without it
                lead = None
            else:  # a lone span that grew once its leading space was stripped
                spans[i : i + 1] = _token_windows(text, spans[i].start, spans[i].end, max_tokens, enc)
            continue
        chunks.append(chunk)
        i = j
        lead = _overlap_start(text, chunk.start, chunk.end, overlap_tokens, enc) if overlap_tokens else None
    return chunks


def _overlap_start(text: str, start: int, end: int, overlap_tokens: int, enc) -> int | None:
    """The earliest word start in text[start:end] whose tail to `end` fits in `overlap_tokens`."""
    words = [m.end() for m in _WORD_GAP.finditer(text, start, end)]
    lo, hi, best = 0, len(words) - 1, None
    while lo <= hi:  # tails shrink as the word start moves right: binary search
        mid = (lo + hi) // 2
        if len(enc.encode_ordinary(text[words[mid] : end])) <= overlap_tokens:
            best, hi = words[mid], mid - 1
        else:
            lo = mid + 1
    return best


def _make_chunk(text: str, start: int, end: int, enc) -> Chunk:
    while start < end and text[start].isspace():
        start += 1
    piece = text[start:end]
    return Chunk(piece, start, end, len(enc.encode_ordinary(piece)))
