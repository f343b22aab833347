"""A set of 64-bit hashes in numpy arrays: eight bytes a member, where a Python set spends ~70.

Values are hashed together by polars (a few nanoseconds each), not one by one in Python.
Members go into a small sorted array; when it fills, it becomes a sorted run, and runs of like
size are merged (as in a log-structured merge tree), so each member is copied a logarithmic
number of times: merging every fill into one large array would copy all of it each time, a
cost that grows with the members. A batch is checked with a binary search in each run, a
handful of them. Used to find repeated ids and to count distinct texts over inputs far larger
than memory would hold as Python objects.

Beyond `memory_members` (8 MB of hashes) the runs in memory go to disk as one `SpilledRun`,
found through a Bloom filter of 10 bits a member: at 10^8 members about 125 MB, not 800.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.arrow_strings import large_strings
from pipeline.spilled_run import SpilledRun

_BUFFER = 65_536
MEMORY_MEMBERS = 1 << 20  # hashes a set keeps in memory (8 MB) before it spills them to disk
_RUN_RATIO = 4  # a run merges into the one before while that one is under 4 times its size


def hash64(values: pa.Array | list) -> np.ndarray:
    """Stable-within-a-process 64-bit hashes of one column's values (ints, strings or bytes).

    Integers are widened and strings made large first, so a value hashes alike whichever
    file's type it came in.
    """
    array = _arrow(values)
    if pa.types.is_integer(array.type) and array.type != pa.uint64():
        array = array.cast(pa.int64())
    elif pa.types.is_string(array.type):
        array = array.cast(pa.large_string())
    elif pa.types.is_binary(array.type):
        array = array.cast(pa.large_binary())
    return pl.Series(array).hash(seed=0).to_numpy().view(np.int64)


def _arrow(values: pa.Array | pa.ChunkedArray | list) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    if len(values) and isinstance(values[0], str):  # a run's texts: built without importing pandas
        try:
            return large_strings(values)
        except AttributeError:  # not all strings: `pa.array` says what else
            pass
    return pa.array(values)


class HashSet:
    """Add values; ask whether a value was added before. Collisions (2^-64 a pair) read as seen."""

    def __init__(self, memory_members: int = MEMORY_MEMBERS):
        self.memory_members = memory_members
        self._runs: list[np.ndarray] = []  # sorted, disjoint, each under a quarter of the one before
        self._recent = np.empty(0, dtype=np.int64)  # sorted too; a run of its own when full
        self._spilled: list[SpilledRun] = []  # on disk, disjoint from all the others
        self._directory: tempfile.TemporaryDirectory | None = None

    def __len__(self) -> int:
        return self._in_memory() + sum(len(run) for run in self._spilled)

    def _in_memory(self) -> int:
        return sum(len(run) for run in self._runs) + len(self._recent)

    def add(self, value) -> bool:
        """Add `value`; True if it was new."""
        return bool(self.add_many([value])[0])

    def add_many(self, values: pa.Array | list) -> np.ndarray:
        """Add each value in order; for each, True if it was new (a repeat within `values` too).
        `values` are one column's: all ints, all strings or all bytes."""
        return self.add_hashes(hash64(values)) if len(values) else np.zeros(0, dtype=bool)

    def add_hashes(self, keys: np.ndarray) -> np.ndarray:
        """`add_many` for values already hashed with `hash64` (in this process or another one
        running the same polars)."""
        distinct, first = np.unique(keys, return_index=True)
        new = np.zeros(len(keys), dtype=bool)
        fresh = ~self._contains_sorted(distinct)
        new[first] = fresh
        self._recent = _merge(self._recent, distinct[fresh])
        if len(self._recent) >= _BUFFER:
            self._runs.append(self._recent)
            self._recent = np.empty(0, dtype=np.int64)
            while len(self._runs) > 1 and len(self._runs[-2]) < _RUN_RATIO * len(self._runs[-1]):
                self._runs[-2:] = [_merge_runs(self._runs[-2], self._runs[-1])]
        if self._in_memory() > self.memory_members:
            self._spill()
        return new

    def _spill(self) -> None:
        """Move every member held in memory to disk, as one sorted run."""
        if self._directory is None:
            self._directory = tempfile.TemporaryDirectory(prefix="embedpipe-hashes-")
        directory = Path(self._directory.name)
        self._spilled.append(SpilledRun(self._members_in_memory(), directory))
        self._runs, self._recent = [], np.empty(0, dtype=np.int64)
        # Runs on disk merge as a binary counter does: a query looks in a logarithmic number of
        # them (one more each spill cost a filter's probes a key each), each member rewritten as often.
        while len(self._spilled) > 1 and len(self._spilled[-2]) < 2 * len(self._spilled[-1]):
            self._spilled[-2:] = [SpilledRun.merged(self._spilled[-2:], directory)]

    def contains_many(self, values: pa.Array | list) -> np.ndarray:
        """For each value, whether it was added before."""
        if not len(values) or not len(self):  # nothing to find: no hashing (a run's first batch)
            return np.zeros(len(values), dtype=bool)
        return self.contains_hashes(hash64(values))

    def contains_hashes(self, keys: np.ndarray) -> np.ndarray:
        """`contains_many` for values already hashed with `hash64`."""
        order = np.argsort(keys, kind="stable")
        found = np.empty(len(keys), dtype=bool)
        found[order] = self._contains_sorted(keys[order])
        return found

    def _contains_sorted(self, keys: np.ndarray) -> np.ndarray:
        """`contains_hashes` of ascending `keys`: a search of sorted keys in a sorted run walks it
        in order (0.06 µs a key in a run of 1M members, against 0.39 for keys in any order)."""
        found = _contains(self._recent, keys)
        for run in self._runs:
            found |= _contains(run, keys)
        for spilled in self._spilled:
            rest = np.flatnonzero(~found)
            found[rest] = spilled.contains(keys[rest])
        return found

    def hashes(self) -> np.ndarray:
        """Every member's hash, sorted: to send this set to another process (spilled ones are
        read back: a partition's set, not a whole backfill's)."""
        members = self._members_in_memory()
        for spilled in self._spilled:
            members = _merge_runs(spilled.members(), members)
        return members

    def _members_in_memory(self) -> np.ndarray:
        members = self._recent
        for run in self._runs:
            members = _merge_runs(run, members)
        return members


def _merge(members: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    """Two sorted arrays with no value in common, as one sorted array (a copy, not a sort)."""
    return np.insert(members, np.searchsorted(members, fresh), fresh)


def _merge_runs(one: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Two sorted runs as one: a stable sort of the two end to end finds the runs and merges them."""
    merged = np.concatenate([one, other])
    merged.sort(kind="stable")  # in place: one copy of the members fewer at once
    return merged


def _contains(members: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """For each key, whether the sorted array `members` holds it."""
    if not len(members):
        return np.zeros(len(keys), dtype=bool)
    at = np.minimum(np.searchsorted(members, keys), len(members) - 1)
    return members[at] == keys
