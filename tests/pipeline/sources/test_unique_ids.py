"""Repeated ids across batches: found at the same row as a plain set would find them, whether the
ids go up (kept as runs of consecutive values) or not (a hash set)."""

import numpy as np
import pyarrow as pa
import pytest

from pipeline.sources.unique_ids import UniqueIds


def first_repeats(batches: list[pa.Array], most_runs: int = 1 << 16) -> tuple[list[int | None], int]:
    ids = UniqueIds(most_runs)
    return [ids.first_repeat(batch) for batch in batches], ids.runs


def brute_force(batches: list[pa.Array]) -> list[int | None]:
    seen, found = set(), []
    for batch in batches:
        at = None
        for i, value in enumerate(batch.to_pylist()):
            if value in seen and at is None:
                at = i
            seen.add(value)
        found.append(at)
        if at is not None:
            break
    return found


def as_array(ids) -> pa.Array:
    if isinstance(ids, pa.Array):
        return ids
    ids = list(ids)
    return pa.array(ids, pa.string() if ids and isinstance(ids[0], str) else pa.int64())


CASES = {
    "a sequence": ([range(0, 5), range(5, 9)], 1),
    "a sequence with gaps": ([[1, 2, 3, 7, 8], [9, 20, 21]], 3),
    "a sequence then one id again": ([range(0, 5), [5, 6, 3]], 0),
    "down, never repeated": ([[5, 6, 7], [1, 2, 3], [4, 8]], 0),
    "down, then an id of the runs": ([[5, 6, 7], [1, 2, 6]], 0),
    "a repeat inside a batch": ([[1, 2, 2, 3]], 0),
    "the last id again at the next batch's start": ([[1, 2, 3], [3, 4]], 0),
    "strings": ([["a", "b"], ["c", "a"]], 0),
    "int32 then int64": ([pa.array([1, 2], pa.int32()), pa.array([3, 2], pa.int64())], 0),
    "empty batches": ([[], [1, 2], [], [2]], 0),
    "up to the largest int64, then a repeat going up": ([[1, 2**63 - 1], [1, 2]], 0),
}


@pytest.mark.parametrize("case", CASES)
def test_the_first_repeat_is_where_a_plain_set_finds_it(case):
    batches, _ = CASES[case]
    batches = [as_array(b) for b in batches]
    found, _ = first_repeats(batches)
    expected = brute_force(batches)
    assert found[: len(expected)] == expected


@pytest.mark.parametrize("case", ["a sequence", "a sequence with gaps"])
def test_ids_that_go_up_are_held_as_runs_not_ids(case):
    batches, runs = CASES[case]
    _, held = first_repeats([as_array(b) for b in batches])
    assert held == runs


def test_too_many_runs_go_into_the_hash_set_and_still_find_a_repeat():
    evens = pa.array(np.arange(0, 2_000, 2))  # a run of one id each
    found, held = first_repeats([evens, pa.array([2_001, 2_003]), pa.array([1_000])], most_runs=100)
    assert found == [None, None, 0] and held == 0


def test_ten_million_sequential_ids_hold_one_run():
    ids = UniqueIds()
    for start in range(0, 10_000_000, 1_000_000):
        assert ids.first_repeat(pa.array(np.arange(start, start + 1_000_000))) is None
    assert ids.runs == 1
