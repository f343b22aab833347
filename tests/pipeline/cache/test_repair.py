"""`cache check` and `cache repair` on real damaged caches: what they count, keep and drop."""

import hashlib
import stat
import time
from collections import Counter

import diskcache
import numpy as np
import pytest

from pipeline.cache.repair import cache_directory, check_cache, repair_cache
from pipeline.cache.vectors import VectorCache
from pipeline.errors import CacheError, ConfigError
from pipeline.providers import get_embedder
from pipeline.run.steps import run_pipeline
from tests.conftest import openai_config, write_parquet
from tests.fakes.openai_server import fake_vector
from tests.pipeline.cache.test_vectors import BAD_ENTRIES, _set_raw, _Trap, damaged_cache, pq_vectors


def test_a_clean_cache_checks_clean(tmp_path):
    cache = VectorCache(tmp_path / "c", "ns:4", 4)
    cache.put_many({"a": np.ones(4), "b": np.arange(4)})
    report = check_cache(tmp_path / "c")
    assert report.clean and (report.good, report.unreadable, sum(report.bad.values())) == (2, 0, 0)
    lines = report.check_lines("c")
    assert lines[0] == f"cache {tmp_path / 'c'}: clean" and "repair" not in "\n".join(lines)


@pytest.mark.parametrize("long_keys", [False, True])
def test_a_repaired_cache_keeps_its_kind_of_keys_and_finds_its_vectors(tmp_path, long_keys):
    if long_keys:  # a cache an embedpipe of before compact keys made: a vector's row, nothing saying how keyed
        old = diskcache.Cache(str(tmp_path / "c"))
        old.set(f"ns:4/{hashlib.sha256(b'old').hexdigest()}", np.full(4, 2, dtype="<f4").tobytes())
        old.close()
    cache = VectorCache(tmp_path / "c", "ns:4", 4)
    cache.put_many({"a": np.ones(4, dtype=np.float32)})  # in a segment, whatever the rows' keys
    cache.close()
    repair_cache(tmp_path / "c")
    again = VectorCache(tmp_path / "c", "ns:4", 4)
    assert again.compact is not long_keys and sorted(again.get_many(["a", "old"])) == ["a", "old"][: 1 + long_keys]


def test_bad_entries_are_counted_by_reason_and_repair_drops_only_them(tmp_path):
    marker = tmp_path / "unpickled"
    cache = VectorCache(tmp_path / "c", "openai:http://127.0.0.1:9/v1:m:4", 4)  # a namespace with slashes
    good = {f"good {i}": np.eye(4, dtype=np.float32)[i] for i in range(4)}
    cache.put_many(good)
    for name, value in BAD_ENTRIES.items():
        _set_raw(cache, name, value)
    _set_raw(cache, "trap", _Trap(str(marker)))
    cache._cache.set("someone else's key", b"1234")
    cache.claim_many(["good 0", "claimed"], "worker-1", seconds=0.05)  # lapsed: left by a run that stopped
    cache.close()
    time.sleep(0.1)

    report = check_cache(tmp_path / "c")
    assert not report.clean and report.good == 4 and (report.claims, report.lapsed_claims) == (2, 2)
    assert report.bad == Counter({"not raw bytes": 4, "wrong size": 3, "not finite": 2, "zero": 1,
                                  "not a vector's key": 1})
    lines = report.check_lines("run.yaml")
    assert lines[0].endswith("damaged") and lines[-1].startswith("run `embedpipe cache repair run.yaml`")

    repaired = repair_cache(tmp_path / "c")
    assert repaired.repair_lines() == [
        f"cache {tmp_path / 'c'} repaired: kept 4 vectors; dropped 13 "
        "(2 claims, 1 not a vector's key, 2 not finite, 4 not raw bytes, 3 wrong size, 1 zero)"
    ]
    after = VectorCache(tmp_path / "c", "openai:http://127.0.0.1:9/v1:m:4", 4)
    kept = after.get_many([*good, *BAD_ENTRIES])
    assert {text: v.tolist() for text, v in kept.items()} == {text: v.tolist() for text, v in good.items()}
    assert check_cache(tmp_path / "c").clean and not marker.exists()


def test_a_file_damaged_mid_way_is_found_and_repair_keeps_every_readable_vector(tmp_path):
    names = damaged_cache(tmp_path / "c")
    report = check_cache(tmp_path / "c")
    assert not report.clean and report.integrity and report.unreadable > 0
    assert report.good + report.unreadable >= len(names)

    repaired = repair_cache(tmp_path / "c")
    assert repaired.good == report.good and repaired.unreadable == report.unreadable
    kept = VectorCache(tmp_path / "c", "ns:16", 16).get_many(names)
    assert 0 < len(kept) == repaired.good < len(names)
    for text, vector in kept.items():
        np.testing.assert_array_equal(vector, fake_vector(text, 16))
    assert check_cache(tmp_path / "c").clean


def test_repair_keeps_large_vectors_other_contents_and_privacy(tmp_path):
    cache = VectorCache(tmp_path / "c", "ns:10000", 10_000)  # 40 KB a vector
    cache.put_many({"big": np.arange(1, 10_001), "nan": np.full(10_000, np.nan)})
    cache.close()
    (tmp_path / "c" / "batches" / "ab12").mkdir(parents=True)  # a Batch API ledger lives under cache.path
    (tmp_path / "c" / "batches" / "ab12" / "ledger.json").write_text("{}")

    assert repair_cache(tmp_path / "c").repair_lines()[0].endswith("kept 1 vectors; dropped 1 (1 not finite)")
    big = VectorCache(tmp_path / "c", "ns:10000", 10_000).get_many(["big"])["big"]
    np.testing.assert_array_equal(big, np.arange(1, 10_001))
    assert (tmp_path / "c" / "batches" / "ab12" / "ledger.json").read_text() == "{}"
    assert len(list((tmp_path / "c").rglob("*.seg"))) == 1  # rewritten without the bad vector
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # nothing left beside it


def test_a_run_after_repair_pays_only_for_what_was_dropped(tmp_path, fake_openai):
    texts = [f"text {i}" for i in range(3000)]
    source = write_parquet(tmp_path / "in" / "docs.parquet", {"id": list(range(len(texts))), "text": texts})
    config = openai_config(tmp_path, fake_openai, source)
    cache_path = config.cache.path
    namespace = get_embedder(config.embedding, "sk-test").cache_namespace
    damaged_cache(cache_path, namespace, fake_openai.dimensions, texts=len(texts))
    with pytest.raises(CacheError, match="is damaged"):
        run_pipeline(config, "sk-test")

    repair_cache(cache_path)
    kept = VectorCache(cache_path, namespace, fake_openai.dimensions).get_many(texts)
    stats = run_pipeline(config, "sk-test")["stats"]
    assert set(fake_openai.calls) == set(texts) - set(kept)
    assert (stats["cache_hits"], stats["bad_cache_entries"]) == (len(kept), 0)
    for text, vector in zip(texts, pq_vectors(config.output.path)):
        np.testing.assert_allclose(vector, fake_vector(text, fake_openai.dimensions), atol=1e-6)


def test_the_target_is_a_config_or_a_directory(tmp_path):
    (tmp_path / "c").mkdir()
    config = tmp_path / "run.yaml"
    config.write_text(f"source:\n  path: {tmp_path / 'in.parquet'}\ncache:\n  path: {tmp_path / 'c'}\n")
    assert str(cache_directory(str(config))) == str(tmp_path / "c")
    assert str(cache_directory(str(config), [f"cache.path={tmp_path / 'd'}"])) == str(tmp_path / "d")
    assert cache_directory(str(tmp_path / "c")) == tmp_path / "c"
    with pytest.raises(ConfigError, match="no such file or directory"):
        cache_directory(str(tmp_path / "nowhere"))
    with pytest.raises(CacheError, match="no cache there"):
        check_cache(tmp_path / "c")


def test_a_file_that_is_not_a_database_is_reported_and_repair_starts_an_empty_cache(tmp_path):
    (tmp_path / "c" / "remote").mkdir(parents=True)  # an object-store mirror lives under cache.path
    (tmp_path / "c" / "cache.db").write_bytes(b"garbage " * 2000)
    report = check_cache(tmp_path / "c")
    assert not report.clean and report.lost == "file is not a database"
    assert "0 read, the rest unreadable: file is not a database" in "\n".join(report.check_lines("c"))
    assert repair_cache(tmp_path / "c").repair_lines() == [
        f"cache {tmp_path / 'c'} repaired: no entry of the old file could be read (file is not a database); "
        "starts empty"
    ]
    assert check_cache(tmp_path / "c").clean and (tmp_path / "c" / "remote").is_dir()
    VectorCache(tmp_path / "c", "ns:4", 4).put_many({"a": np.ones(4)})
