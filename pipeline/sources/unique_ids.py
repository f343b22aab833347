"""Repeated ids, found holding as little as the ids allow.

Most tables' keys are integers that only go up (an auto-increment, a sequence): while every id is
above the last one, no id can repeat, and what has been seen is kept as runs of consecutive
values, two integers a run, whatever the rows. Ids that go down, leave gaps in too many places,
or are not integers go into a `HashSet` (eight bytes an id, spilled to disk beyond its bound),
the runs seen so far first.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.arrow_strings import from_numpy, int_values
from pipeline.hashset import HashSet

MOST_RUNS = 1 << 16  # runs of consecutive ids kept before they go into the hash set
_SPREAD = 1 << 20  # ids a run is spread into the hash set at a time
_LARGEST = np.iinfo(np.int64).max


class UniqueIds:
    """Add each batch's ids in order; learn where the first one seen before is."""

    def __init__(self, most_runs: int = MOST_RUNS):
        self.most_runs = most_runs
        self._starts: list[int] = []  # runs of consecutive ids, ascending: [start, stop)
        self._stops: list[int] = []
        self._seen: HashSet | None = None  # once the ids stopped going up

    @property
    def runs(self) -> int:
        """Runs of consecutive ids held instead of the ids (0 once they went into the hash set)."""
        return len(self._starts)

    def first_repeat(self, ids: pa.Array) -> int | None:
        """Add `ids` (no nulls); the position of the first one added before (in an earlier batch
        or earlier in this one), or None."""
        if self._seen is None:
            values = _ascending_integers(ids, self._stops[-1] if self._stops else None)
            if values is not None:
                self._add_runs(values)
                if len(self._starts) > self.most_runs:
                    self._spread_runs()
                return None
            self._spread_runs()
        assert self._seen is not None
        new = self._seen.add_many(ids)
        return None if new.all() else int(new.argmin())

    def _add_runs(self, values: np.ndarray) -> None:
        """Keep `values` (ascending, above every id before) as runs of consecutive values."""
        if not len(values):
            return
        cuts = np.flatnonzero(np.diff(values) != 1) + 1
        starts, stops = values[np.r_[0, cuts]].tolist(), (values[np.r_[cuts - 1, len(values) - 1]] + 1).tolist()
        if self._stops and self._stops[-1] == starts[0]:  # the last run goes on
            self._stops[-1] = stops[0]
            starts, stops = starts[1:], stops[1:]
        self._starts += starts
        self._stops += stops

    def _spread_runs(self) -> None:
        """Move the runs into a hash set, from which every later batch is checked."""
        self._seen = HashSet()
        for start, stop in zip(self._starts, self._stops):
            for first in range(start, stop, _SPREAD):
                self._seen.add_many(from_numpy(np.arange(first, min(stop, first + _SPREAD), dtype=np.int64)))
        self._starts, self._stops = [], []


def _ascending_integers(ids: pa.Array, after: int | None) -> np.ndarray | None:
    """The ids as int64, when they are integers (of a type `hash64` hashes as int64) that go up
    from above `after`; None otherwise. Read from the buffer: `to_numpy` would import pandas."""
    kind = ids.type
    if not pa.types.is_integer(kind) or kind == pa.uint64():
        return None
    values = int_values(ids).astype(np.int64, copy=False)
    if len(values) and ((after is not None and values[0] < after) or values[-1] == _LARGEST):
        return None  # going down, or at the largest id, whose run would end past int64
    return values if bool(np.all(values[1:] > values[:-1])) else None
