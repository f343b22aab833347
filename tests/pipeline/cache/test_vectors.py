import hashlib
import stat
import time

import diskcache

import numpy as np

from pipeline.cache.vectors import VectorCache


def test_vectors_round_trip_as_raw_float32_bytes(tmp_path):
    cache = VectorCache(tmp_path / "c", "ns", 4)
    cache.put_many({"hello": np.array([1, 2, 3, 4], dtype=np.float32)})
    assert cache.get_many(["hello", "absent"])["hello"].tolist() == [1, 2, 3, 4]
    (segment,) = (tmp_path / "c" / "segments").rglob("*.seg")  # header, key, then the vector's raw bytes
    assert segment.read_bytes()[-16:] == np.array([1, 2, 3, 4], dtype="<f4").tobytes()
    assert len(cache._cache) == 1  # SQLite keeps the key format only: no vector, no pickle


def test_keys_of_many_texts_are_each_texts_key(tmp_path):
    cache = VectorCache(tmp_path, "openai:text-embedding-3-small:16", 16)
    texts = ["plain", "café", "", "日本語のテキスト", "emoji 🙂"]
    assert cache.keys(texts) == [cache.key(text) for text in texts]


def test_a_fresh_cache_keys_compactly_and_says_so(tmp_path):
    cache = VectorCache(tmp_path / "c", "openai:https://api.openai.com/v1:text-embedding-3-small:1536", 4)
    cache.put_many({"hello": np.ones(4, dtype=np.float32)})
    assert cache.compact and len(cache.key("hello")) < 40 and "hello" in cache.get_many(["hello"])
    cache.close()
    assert VectorCache(tmp_path / "c", "another:4", 4).compact  # it says so: the next opening agrees


def test_a_cache_with_long_keys_keeps_them_and_its_vectors(tmp_path):
    namespace, vector = "openai:m:4", np.arange(1, 5, dtype=np.float32)
    store = diskcache.Cache(str(tmp_path / "c"))  # filled by an embedpipe of before compact keys
    store.set(f"{namespace}/{hashlib.sha256(b'hello').hexdigest()}", vector.tobytes())
    store.close()
    cache = VectorCache(tmp_path / "c", namespace, 4)
    assert not cache.compact and cache.get_many(["hello"])["hello"].tolist() == vector.tolist()
    cache.put_many({"new": vector})
    assert cache.key("new") == f"{namespace}/{hashlib.sha256(b'new').hexdigest()}"


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


# --- every vector read is checked, as answers are ---------------------------------------------

import json
import os
import pickle
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pipeline.errors import CacheError
from pipeline.providers import get_embedder
from pipeline.run.steps import run_pipeline
from tests.conftest import openai_config, write_parquet
from tests.fakes.openai_server import fake_vector


def _set_raw(cache: VectorCache, text: str, value) -> None:
    cache._cache.set(cache.key(text), value)  # as a damaged disk or another program might leave it


BAD_ENTRIES = {
    "NaN": np.array([1, np.nan, 0, 0], dtype="<f4").tobytes(),
    "infinity": np.array([1, 0, -np.inf, 0], dtype="<f4").tobytes(),
    "all zeros": np.zeros(4, dtype="<f4").tobytes(),
    "too short": np.ones(3, dtype="<f4").tobytes(),
    "too long": np.ones(5, dtype="<f4").tobytes(),
    "empty": b"",
    "a pickled object": {"not": "bytes"},
    "text, not bytes": "1234567890123456",
    "a number": 42,
}


@pytest.mark.parametrize("value", BAD_ENTRIES.values(), ids=BAD_ENTRIES.keys())
def test_an_entry_that_is_no_usable_vector_is_a_miss_and_reported(tmp_path, value):
    cache = VectorCache(tmp_path / "c", "ns:4", 4)
    cache.put_many({"good": np.array([0, 1, 0, 0], dtype=np.float32)})
    _set_raw(cache, "bad", value)
    lookup = cache.lookup(["good", "bad", "absent"])
    assert list(lookup.vectors) == ["good"] and lookup.bad == ["bad"]
    assert cache.get_many(["bad"]) == {}


def test_a_vector_stored_over_a_bad_entry_is_read_back(tmp_path):
    cache = VectorCache(tmp_path / "c", "ns:4", 4)
    _set_raw(cache, "t", BAD_ENTRIES["NaN"])
    cache.put_many({"t": np.array([0, 0, 1, 0], dtype=np.float32)})
    lookup = cache.lookup(["t"])
    assert lookup.bad == [] and lookup.vectors["t"].tolist() == [0, 0, 1, 0]


def test_a_segment_cut_short_is_a_miss_said_once_and_the_vector_stored_again_is_found(tmp_path, caplog):
    cache = VectorCache(tmp_path / "c", "ns:10000", 10_000)  # 40 KB a vector
    cache.put_many({"kept": np.ones(10_000)})
    cache.put_many({"cut": np.full(10_000, 2.0)})
    cache.close()  # the run that wrote them ended (each open handle says it once)
    newest = max((tmp_path / "c" / "segments").rglob("*.seg"), key=lambda p: p.name.split("-")[1])
    os.truncate(newest, newest.stat().st_size - 100)  # a crash or a full disk mid-file
    again = VectorCache(tmp_path / "c", "ns:10000", 10_000)
    assert list(again.get_many(["kept", "cut"])) == ["kept"]
    again.put_many({"cut": np.full(10_000, 2.0)})
    assert again.get_many(["cut"])["cut"][0] == 2.0
    warnings = [r.getMessage() for r in caplog.records if "cut short" in r.getMessage()]
    assert len(warnings) == 1 and "`embedpipe cache repair` drops it" in warnings[0]


def test_a_pickle_is_never_loaded(tmp_path):
    marker = tmp_path / "unpickled"
    cache = VectorCache(tmp_path / "c", "ns:4", 4)
    _set_raw(cache, "trap", _Trap(str(marker)))
    assert cache.lookup(["trap"]).bad == ["trap"] and not marker.exists()


class _Trap:
    """A pickle that makes a directory when it is loaded."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_a_run_embeds_again_what_the_cache_holds_badly_and_counts_it(tmp_path, fake_openai):
    texts = ["alpha one", "beta two", "gamma three", "delta four", "epsilon five"]
    source = write_parquet(tmp_path / "in" / "docs.parquet", {"id": list(range(5)), "text": texts})
    config = openai_config(tmp_path, fake_openai, source)
    dims = fake_openai.dimensions
    cache = VectorCache.for_embedder(config.cache.path, get_embedder(config.embedding, "sk-test"))
    cache.put_many({text: fake_vector(text, dims) for text in texts[:2]})
    _set_raw(cache, texts[2], np.full(dims, np.nan, dtype="<f4").tobytes())
    _set_raw(cache, texts[3], np.zeros(dims, dtype="<f4").tobytes())
    _set_raw(cache, texts[4], fake_vector(texts[4], dims)[:-1].tobytes())
    cache.close()

    stats = run_pipeline(config, "sk-test")["stats"]
    vectors = pq_vectors(config.output.path)
    for text, vector in zip(texts, vectors):
        np.testing.assert_allclose(vector, fake_vector(text, dims), atol=1e-6)
    assert fake_openai.calls == Counter(texts[2:])
    assert (stats["bad_cache_entries"], stats["cache_hits"], stats["embedded_chunks"]) == (3, 2, 3)

    again = openai_config(tmp_path, fake_openai, source, output__path=str(tmp_path / "again"))
    stats = run_pipeline(again, "sk-test")["stats"]
    assert (stats["bad_cache_entries"], stats["cache_hits"], stats["requests"]) == (0, 5, 0)


def pq_vectors(path) -> list:
    import pyarrow.parquet as pq

    return pq.read_table(path).column("embedding").to_pylist()


# --- a damaged file or a full disk is one line that names the fix -------------------------------

def damaged_cache(path: Path, namespace: str = "ns:16", dimensions: int = 16, texts: int = 5000) -> list[str]:
    """A cache of `texts` vectors at `path`, one SQLite row each as an embedpipe of before segments
    kept them, with 32 KB of garbage written over the middle of its file."""
    path = Path(path)
    cache = VectorCache(path, namespace, dimensions)
    names = [f"text {i}" for i in range(texts)]
    with cache._cache.transact():
        for name in names:
            _set_raw(cache, name, np.asarray(fake_vector(name, dimensions), dtype="<f4").tobytes())
    cache.close()
    with open(path / "cache.db", "r+b") as db:
        db.seek(os.path.getsize(path / "cache.db") // 2)
        db.write(np.random.default_rng(0).bytes(32 * 1024))
    return names


def test_a_file_damaged_mid_way_is_one_line_naming_the_repair(tmp_path):
    names = damaged_cache(tmp_path / "c")
    with pytest.raises(CacheError) as failure:
        VectorCache(tmp_path / "c", "ns:16", 16).get_many(names)
    message = str(failure.value)
    assert message.startswith(f"cache.path {tmp_path / 'c'} is damaged (database disk image is malformed)")
    assert f"run `embedpipe cache repair {tmp_path / 'c'}`" in message and "\n" not in message


def test_a_file_that_is_not_a_database_is_one_line_on_open(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "cache.db").write_bytes(b"garbage " * 2000)
    with pytest.raises(CacheError, match=r"is damaged \(file is not a database\): run `embedpipe cache repair"):
        VectorCache(tmp_path / "c", "ns:4", 4)


FILL_UNTIL_FULL = """
import json, subprocess, sys
import numpy as np
from pipeline.cache.vectors import VectorCache
from pipeline.errors import CacheError

path, dims, per_batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cache, stored, message = VectorCache(path, f"ns:{dims}", dims), [], None
vector = lambda i: np.full(dims, i + 1, dtype=np.float32)
try:
    for start in range(0, 10**6, per_batch):
        batch = {f"text {i}": vector(i) for i in range(start, start + per_batch)}
        cache.put_many(batch)
        stored += batch
except CacheError as exc:
    message = str(exc)
subprocess.run(["mount", "-o", "remount,size=64m", sys.argv[4]], check=True)
found = VectorCache(path, f"ns:{dims}", dims).get_many(stored)
readable = len(found) == len(stored) and all((found[t] == vector(int(t.split()[1]))).all() for t in stored)
cache.put_many({"after": vector(0)})  # the handle that hit the full disk writes again once there is room
print(json.dumps({"message": message, "stored": len(stored), "readable": readable}))
"""


def _user_namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _user_namespaces_work(), reason="needs `unshare -rm` (user, mount namespaces): a tiny tmpfs")
@pytest.mark.parametrize(("dims", "per_batch", "disk", "needs"), [(16, 64, "1m", "5 KB"), (10_000, 8, "2m", "320 KB")],
                         ids=["small vectors", "large vectors"])
def test_a_full_disk_is_one_line_and_what_was_stored_before_stays_readable(tmp_path, dims, per_batch, disk, needs):
    disk_dir = tmp_path / "disk"
    disk_dir.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(FILL_UNTIL_FULL)
    command = (f"mount -t tmpfs -o size={disk} tmpfs {disk_dir} && "
               f"exec {sys.executable} {script} {disk_dir / 'cache'} {dims} {per_batch} {disk_dir}")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["message"] == (f"cache.path {disk_dir / 'cache'}: the disk is full (storing {per_batch} vectors "
                                 f"needs about {needs} more): free space there or set cache.path elsewhere")
    assert result["stored"] > 0 and result["readable"]


def test_hits_say_by_position_what_a_lookup_says_by_text(tmp_path):
    cache = VectorCache(tmp_path / "c", "ns:4", 4)
    cache.put_many({"stored": np.full(4, 1.0), "zeros": np.zeros(4)})
    cache._cache.set(cache.key("old row"), np.full(4, 2.0, dtype="<f4").tobytes())  # a cache from before segments
    cache._cache.set(cache.key("pickled"), [1.0, 2.0, 3.0, 4.0])  # not raw bytes: bad, never loaded
    texts = ["absent", "stored", "zeros", "old row", "pickled"]
    hits = cache.hits(texts)
    assert hits.found.tolist() == [False, True, False, True, False]
    assert hits.matrix[:, 0].tolist() == [1, 2]  # a row for each found text, in order: misses take none
    assert sorted(hits.bad) == ["pickled", "zeros"]
    lookup = cache.lookup(texts[::-1] + texts)
    assert {text: vector[0] for text, vector in lookup.vectors.items()} == {"stored": 1, "old row": 2}
    assert sorted(lookup.bad) == ["pickled", "zeros"]
