import pytest

from pipeline import hashset
from pipeline.hashset import HashSet


@pytest.mark.parametrize("values", [
    list(range(200_000)),
    [f"id-{i}" for i in range(100_000)],
    [2**70, -(2**70), b"raw", "text", 0],
])
def test_each_value_is_new_once(values, monkeypatch):
    monkeypatch.setattr(hashset, "_BUFFER", 1_000)  # exercise the merges
    seen = HashSet()
    assert all(seen.add(v) for v in values)
    assert not any(seen.add(v) for v in values)
    assert len(seen) == len(values)
