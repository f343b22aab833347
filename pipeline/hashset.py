"""A set of 64-bit hashes in numpy arrays: eight bytes a member, where a Python set spends ~70.

Members go into a small buffer that is merged into a sorted array when it fills, so lookups are
a binary search plus a set probe. Used to find repeated ids and to count distinct texts over
inputs far larger than memory would hold as Python objects.
"""

from __future__ import annotations

import hashlib

import numpy as np

_BUFFER = 65_536


def hash64(value) -> int:
    """A stable 64-bit hash of a str, bytes or int value (ints in range are their own hash)."""
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return value
    data = value if isinstance(value, bytes) else str(value).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


class HashSet:
    """Add values; ask whether a value was added before. Collisions (2^-64 a pair) read as seen."""

    def __init__(self):
        self._sorted = np.empty(0, dtype=np.int64)
        self._recent: set[int] = set()

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    def add(self, value) -> bool:
        """Add `value`; True if it was new."""
        return self.add_many([value])[0]

    def add_many(self, values: list) -> list[bool]:
        """Add each value in order; for each, True if it was new (a repeat within `values` too)."""
        keys = [hash64(v) for v in values]
        in_sorted = self._in_sorted(np.array(keys, dtype=np.int64)) if len(self._sorted) else [False] * len(keys)
        new = []
        for key, old in zip(keys, in_sorted):
            fresh = not old and key not in self._recent
            if fresh:
                self._recent.add(key)
            new.append(fresh)
        if len(self._recent) >= _BUFFER:
            self._sorted = np.union1d(self._sorted, np.fromiter(self._recent, dtype=np.int64, count=len(self._recent)))
            self._recent.clear()
        return new

    def _in_sorted(self, keys: np.ndarray) -> list[bool]:
        at = np.minimum(np.searchsorted(self._sorted, keys), len(self._sorted) - 1)
        return (self._sorted[at] == keys).tolist()
