import tracemalloc

import numpy as np
import pyarrow as pa
import pytest

from pipeline import hashset
from pipeline.hashset import HashSet
from pipeline.spilled_run import SpilledRun


@pytest.mark.parametrize("values", [
    list(range(200_000)),
    [f"id-{i}" for i in range(100_000)],
    [2**63 - 1, -(2**63), 0],
    [b"raw", b"", b"\x00"],
])
@pytest.mark.parametrize("memory_members", [hashset.MEMORY_MEMBERS, 3_000])  # 3,000: most members on disk
def test_each_value_is_new_once(values, memory_members, monkeypatch):
    monkeypatch.setattr(hashset, "_BUFFER", 1_000)  # exercise the merges
    seen = HashSet(memory_members)
    batches = [values[i : i + 7_919] for i in range(0, len(values), 7_919)]
    assert all(seen.add_many(batch).all() for batch in batches)
    assert not any(seen.add_many(batch).any() for batch in batches)
    assert len(seen) == len(values) and not seen.add(values[0])
    assert seen.contains_many(values[::-1]).all()
    members = seen.hashes()  # every run's members, sorted: what another process merges
    assert len(members) == len(values) and (members[1:] > members[:-1]).all()


@pytest.mark.parametrize("added, asked, found", [
    (["a", "b"], ["b", "c", "a"], [True, False, True]),
    (["a", "b"], [], []),
    ([], ["a", "b"], [False, False]),
])
def test_contains_asks_without_adding(added, asked, found):
    seen = HashSet()
    seen.add_many(added)
    assert seen.contains_many(asked).tolist() == found and len(seen) == len(added)


@pytest.mark.parametrize("memory_members", [hashset.MEMORY_MEMBERS, 2_000])  # 2,000: most members on disk
def test_values_asked_in_any_order_are_found_where_they_were_added(memory_members, monkeypatch):
    monkeypatch.setattr(hashset, "_BUFFER", 500)  # several runs in memory
    rng = np.random.default_rng(7)
    added = rng.permutation(20_000)[:12_000]
    seen = HashSet(memory_members=memory_members)
    for part in np.array_split(added, 9):
        seen.add_many(part)
    asked = rng.permutation(np.r_[np.arange(20_000), added[:500]])  # repeats too
    assert seen.contains_many(asked).tolist() == np.isin(asked, added).tolist()


def test_a_value_is_the_same_whatever_its_column_type():
    seen = HashSet()
    seen.add_many(pa.array([1, 2], type=pa.int32()))
    seen.add_many(pa.array(["a"], type=pa.string()))
    assert not seen.add_many(pa.array([2, 1], type=pa.int64())).any()
    assert not seen.add_many(pa.array(["a"], type=pa.large_string())).any()


def test_repeats_within_one_batch_are_new_once():
    assert HashSet().add_many(["a", "b", "a", "b", "c"]).tolist() == [True, True, False, False, True]


def test_a_set_beyond_its_memory_bound_keeps_the_rest_on_disk_until_it_goes():
    seen = HashSet(memory_members=100_000)
    for start in range(0, 1_000_000, 65_536):
        seen.add_many(list(range(start, min(start + 65_536, 1_000_000))))
    assert seen._in_memory() <= 100_000 + 65_536 and len(seen) == 1_000_000
    files = [run.path for run in seen._spilled]
    assert files and all(path.exists() for path in files)
    assert seen.contains_many([5, 999_999, 1_000_000, -1]).tolist() == [True, True, False, False]
    del seen
    assert not any(path.exists() for path in files)


@pytest.mark.parametrize("asked", [10, 50_000])  # a few keys read block by block, many read through
def test_a_spilled_run_finds_its_members_and_lets_few_others_through(asked, tmp_path):
    rng = np.random.default_rng(7)
    members = np.unique(rng.integers(-(2**63), 2**63 - 1, size=200_000, dtype=np.int64))
    run = SpilledRun(members, tmp_path)
    inside, outside = rng.choice(members, asked), rng.integers(-(2**63), 2**63 - 1, size=asked, dtype=np.int64)
    assert run.contains(inside).all() and not run.contains(outside).any()
    assert run.filter.maybe(outside).mean() < 0.05  # the filter's false positives, about 2%
    np.testing.assert_array_equal(run.members(), members)


@pytest.mark.parametrize("asked", [3, 5_000])  # block by block, read through
def test_keys_outside_a_spilled_run_that_pass_its_filter_are_not_found(asked, tmp_path, monkeypatch):
    run = SpilledRun(np.arange(100, 300_100, 3, dtype=np.int64), tmp_path)
    every_key_passes = lambda keys: np.ones(len(keys), dtype=bool)  # noqa: E731  every key a false positive
    monkeypatch.setattr(run.filter, "maybe", every_key_passes)
    outside = np.r_[np.arange(-asked, 0), np.arange(400_000, 400_000 + asked)].astype(np.int64)
    assert not run.contains(outside).any()
    assert run.contains(np.array([100, 300_097, 101])).tolist() == [True, True, False]


@pytest.mark.parametrize("sizes", [[5_000, 3_000], [40_000, 20_000, 1], [1, 1], [70_000, 0]])
def test_merged_runs_are_the_run_of_all_their_members(sizes, tmp_path, monkeypatch):
    from pipeline import spilled_run

    monkeypatch.setattr(spilled_run, "_MERGE_BLOCKS", 4)  # merged in many pieces
    monkeypatch.setattr(spilled_run, "_SLICE_BLOCKS", 4)  # and read through in many slices
    rng = np.random.default_rng(len(sizes))
    members = np.unique(rng.integers(-(2**63), 2**63 - 1, size=sum(sizes) * 2, dtype=np.int64))[: sum(sizes)]
    parts = np.split(rng.permutation(members), np.cumsum(sizes)[:-1])
    runs = [SpilledRun(np.sort(part), tmp_path) for part in parts]
    merged, whole = SpilledRun.merged(runs, tmp_path), SpilledRun(members, tmp_path)
    np.testing.assert_array_equal(merged.members(), members)
    np.testing.assert_array_equal(merged.fences, whole.fences)
    np.testing.assert_array_equal(merged.filter.words, whole.filter.words)
    assert merged.contains(members[::7]).all() and not any(run.path.exists() for run in runs)


def test_merging_runs_holds_a_piece_of_them_in_memory_not_every_member(tmp_path, monkeypatch):
    from pipeline import spilled_run

    monkeypatch.setattr(spilled_run, "_MERGE_BLOCKS", 16)  # 64 KiB pieces of 4 MB runs
    rng = np.random.default_rng(3)
    members = np.unique(rng.integers(-(2**63), 2**63 - 1, size=1_000_000, dtype=np.int64))
    runs = [SpilledRun(members[::2], tmp_path), SpilledRun(members[1::2], tmp_path)]
    tracemalloc.start()
    try:
        SpilledRun.merged(runs, tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the merged run's filter (1.25 bytes a member) and a piece or two; every member is 8 bytes
    assert peak < members.nbytes / 2


def test_a_set_far_beyond_its_memory_bound_keeps_few_runs_on_disk(monkeypatch):
    monkeypatch.setattr(hashset, "_BUFFER", 500)
    seen, values = HashSet(memory_members=1_000), np.arange(40_000)
    for start in range(0, len(values), 700):
        assert seen.add_many(values[start : start + 700]).all()
    assert len(seen._spilled) <= 6  # about 35 spills, merged as a binary counter: log2(35) + 1 runs at most
    assert seen.contains_many(values).all() and not seen.contains_many(values + 40_000).any()
