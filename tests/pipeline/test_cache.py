import stat
import time

import numpy as np

from pipeline.cache import VectorCache


def test_vectors_round_trip_as_raw_float32_bytes(tmp_path):
    cache = VectorCache(tmp_path / "c", "ns", 4)
    cache.put_many({"hello": np.array([1, 2, 3, 4], dtype=np.float32)})
    assert cache.get_many(["hello", "absent"])["hello"].tolist() == [1, 2, 3, 4]
    raw = cache._cache.get(cache.key("hello"))
    assert isinstance(raw, bytes) and len(raw) == 16  # bytes, never a pickled object


def test_directory_is_private(tmp_path):
    VectorCache(tmp_path / "c", "ns", 4)
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o700


def test_namespaces_and_sizes_do_not_mix(tmp_path):
    VectorCache(tmp_path / "c", "model-a", 4).put_many({"t": np.ones(4)})
    assert VectorCache(tmp_path / "c", "model-b", 4).get_many(["t"]) == {}
    wrong_size = VectorCache(tmp_path / "c", "model-a", 8)
    assert wrong_size.get_many(["t"]) == {}


def test_nothing_is_evicted(tmp_path):
    cache = VectorCache(tmp_path / "c", "ns", 4)
    assert cache._cache.eviction_policy == "none"


def test_a_pickled_entry_is_a_miss_and_never_loaded(tmp_path):
    cache = VectorCache(tmp_path / "c", "ns", 4)
    cache._cache.set(cache.key("evil"), {"not": "bytes"})  # diskcache would pickle this
    assert cache.get_many(["evil"]) == {}


def test_large_vectors_stored_in_files_round_trip(tmp_path):
    cache = VectorCache(tmp_path / "c", "ns", 10_000)  # 40 KB: over diskcache's inline limit
    vector = np.arange(10_000, dtype=np.float32)
    cache.put_many({"big": vector})
    np.testing.assert_array_equal(cache.get_many(["big"])["big"], vector)


def test_a_claimed_text_is_held_by_one_owner_until_released_or_lapsed(tmp_path):
    first, second = VectorCache(tmp_path, "ns", 4), VectorCache(tmp_path, "ns", 4)  # two processes' handles
    assert first.claim_many(["a", "b"], "worker-1", seconds=60) == ["a", "b"]
    assert second.claim_many(["b", "c"], "worker-2", seconds=0.2) == ["c"]
    assert second.claimed(["a", "b", "c", "d"]) == {"a", "b", "c"}
    second.release_many(["a"], "worker-2")  # not its claim: nothing happens
    first.release_many(["a"], "worker-1")
    time.sleep(0.3)
    assert first.claimed(["a", "b", "c"]) == {"b"}  # released, held, lapsed
