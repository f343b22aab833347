"""What a reader keeps in memory of a segment to find its keys: the top 32 bits of each, sorted,
as the bucket of the key space it falls in and the bits below the bucket's.

Keys are sha256 bits, spread evenly, so a bucket of the top bits holds a handful of them: a key is
found in its bucket in a few vectorised steps, touching a cache line or two. A binary search over
the whole array cost a cache miss a step: 1.2 µs a key at 7 M keys in random order, 0.6 µs in
order, against about 0.05 µs here at any size.

Memory: where a store holds `starts` (one entry a bucket: 0.5 to 1 byte a key), a key's bucket
bits need not be held again. A file of 2^18 keys or more has buckets of 16 bits or more, and the
rest of its top 32 bits fits in 2 bytes a key, not 4 (at 10^8 keys, 200 MB less).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

KEYS_A_BUCKET = 4  # on average: buckets are a power of two, so 4 to 8
TOP = 32  # bits of each key held


class KeyIndex:
    """The top bits of a segment's keys, sorted: where each bucket of them starts, and for each
    key the bits below its bucket's (`rest`)."""

    def __init__(self, top: np.ndarray):
        """The index of the sorted top bits `top` (`from_slices` builds it without them all at once)."""
        self._build(len(top), [top])

    @classmethod
    def from_slices(cls, rows: int, slices: Iterable[np.ndarray]) -> KeyIndex:
        """The index of `rows` sorted top bits arriving a slice at a time, in order. Memory holds
        what the index keeps and one slice's temporaries: built from the whole array, a file of
        10M keys took 184 MB for a moment to keep 39 MB (19 bytes a key, at any size)."""
        index = cls.__new__(cls)
        index._build(rows, slices)
        return index

    def _build(self, rows: int, slices: Iterable[np.ndarray]) -> None:
        self.bits = min(TOP, max(0, (rows // KEYS_A_BUCKET).bit_length() - 1))
        self._below = np.uint32((1 << (TOP - self.bits)) - 1)  # the bits under a bucket's
        self.rest = np.empty(rows, np.uint16 if TOP - self.bits <= 16 else np.uint32)
        # each bucket's count at its next one's place, then summed in place into where each starts;
        # uint32 where a file holds under 2^32 keys: 0.5 to 1 byte a key
        self.starts = np.zeros(2**self.bits + 1, np.uint32 if rows < 2**32 else np.int64)
        done = 0
        for top in slices:
            top = np.asarray(top, dtype=np.uint32)
            if not len(top):
                continue
            self.rest[done : done + len(top)] = top & self._below
            buckets = self._buckets(top)
            low = int(buckets.min())  # the first, where the file is whole: its keys are sorted
            counts = np.bincount(buckets - low).astype(self.starts.dtype)
            self.starts[low + 1 : low + 1 + len(counts)] += counts
            done += len(top)
        self.steps = int(self.starts.max(initial=0)).bit_length()  # halvings that empty the fullest bucket
        np.cumsum(self.starts, out=self.starts)

    @property
    def nbytes(self) -> int:
        return self.rest.nbytes + self.starts.nbytes

    def rows_of(self, top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(which key, row) for every row holding a key's top bits: one row a key nearly always,
        several where stored keys share their top bits (the caller tells them apart)."""
        top = np.asarray(top, dtype=np.uint32)
        if not len(self.rest):
            return np.empty(0, np.intp), np.empty(0, np.int64)
        bucket, rest = self._buckets(top), (top & self._below).astype(self.rest.dtype)
        opens = self.starts[bucket].astype(np.intp)
        last = self._bound(bucket, rest, after=True) - 1
        held = (last >= opens) & (self.rest[np.maximum(last, 0)] == rest)  # in the key's own bucket
        first = last.copy()
        shared = held & (last - 1 >= opens) & (self.rest[np.maximum(last - 1, 0)] == rest)
        query = np.flatnonzero(held)
        if not shared.any():
            return query, last[query]
        first[shared] = self._bound(bucket[shared], rest[shared], after=False)
        counts = (last - first + 1)[query]
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        return np.repeat(query, counts), np.repeat(first[query], counts) + np.arange(int(counts.sum())) - starts

    def bound(self, top: np.ndarray, after: bool) -> np.ndarray:
        """`np.searchsorted(<the keys' top bits>, top, side="right" if after else "left")`, a bucket
        at a time: within one, the bits below the bucket's order its keys."""
        top = np.asarray(top, dtype=np.uint32)
        return self._bound(self._buckets(top), (top & self._below).astype(self.rest.dtype), after)

    def _bound(self, bucket: np.ndarray, rest: np.ndarray, after: bool) -> np.ndarray:
        """`bound` of the keys in `bucket` whose bits below it are `rest`."""
        low, high = self.starts[bucket].astype(np.intp), self.starts[bucket + 1].astype(np.intp)
        last = max(len(self.rest) - 1, 0)
        for _ in range(self.steps):
            middle = (low + high) >> 1
            stored = self.rest[np.minimum(middle, last)]
            right = (stored <= rest if after else stored < rest) & (low < high)
            high = np.where(right | (low >= high), high, middle)
            low = np.where(right, middle + 1, low)
        return low

    def _buckets(self, top: np.ndarray) -> np.ndarray:
        """The bucket of each of `top`."""
        if not self.bits:  # a shift by all 32 bits is undefined: every key is in bucket 0
            return np.zeros(len(top), np.intp)
        return (np.asarray(top, dtype=np.uint32) >> np.uint32(TOP - self.bits)).astype(np.intp)
