"""Packing texts into requests: consecutive slices within a request's input and token caps."""

from __future__ import annotations

import threading
from collections.abc import Iterator


class Cursor:
    """Consecutive slices of one call's texts, handed out in order, each sized when taken."""

    def __init__(self, token_counts: list[int]):
        self.token_counts = token_counts
        self.start = 0
        self._lock = threading.Lock()

    @property
    def left(self) -> bool:
        return self.start < len(self.token_counts)

    def left_counts(self) -> list[int]:
        return self.token_counts[self.start :]

    def take(self, max_inputs: int, max_tokens: int) -> slice | None:
        with self._lock:
            if not self.left:
                return None
            batch = next_batch(self.token_counts, self.start, max_inputs, max_tokens)
            self.start = batch.stop
            return batch


def pack_batches(token_counts: list[int], max_inputs: int, max_tokens: int) -> Iterator[slice]:
    """Consecutive slices holding at most `max_inputs` texts and `max_tokens` tokens each."""
    start = 0
    while start < len(token_counts):
        batch = next_batch(token_counts, start, max_inputs, max_tokens)
        yield batch
        start = batch.stop


def next_batch(token_counts: list[int], start: int, max_inputs: int, max_tokens: int) -> slice:
    """The slice from `start` holding at most `max_inputs` texts and `max_tokens` tokens (at
    least one text, however long)."""
    stop, tokens = start, 0
    while stop < len(token_counts) and stop - start < max_inputs:
        if stop > start and tokens + token_counts[stop] > max_tokens:
            break
        tokens += token_counts[stop]
        stop += 1
    return slice(start, stop)
