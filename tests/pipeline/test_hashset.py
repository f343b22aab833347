import pyarrow as pa
import pytest

from pipeline import hashset
from pipeline.hashset import HashSet


@pytest.mark.parametrize("values", [
    list(range(200_000)),
    [f"id-{i}" for i in range(100_000)],
    [2**63 - 1, -(2**63), 0],
    [b"raw", b"", b"\x00"],
])
def test_each_value_is_new_once(values, monkeypatch):
    monkeypatch.setattr(hashset, "_BUFFER", 1_000)  # exercise the merges
    seen = HashSet()
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


def test_a_value_is_the_same_whatever_its_column_type():
    seen = HashSet()
    seen.add_many(pa.array([1, 2], type=pa.int32()))
    seen.add_many(pa.array(["a"], type=pa.string()))
    assert not seen.add_many(pa.array([2, 1], type=pa.int64())).any()
    assert not seen.add_many(pa.array(["a"], type=pa.large_string())).any()


def test_repeats_within_one_batch_are_new_once():
    assert HashSet().add_many(["a", "b", "a", "b", "c"]).tolist() == [True, True, False, False, True]
