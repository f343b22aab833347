"""Segment files: many writes merged into few files, found from other handles, mended by repair."""

import fcntl
import gc
import os
import subprocess
import sys
import threading
import time
import tracemalloc
import weakref
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipeline.cache import segment_store, segments
from pipeline.cache.repair import check_cache, repair_cache
from pipeline.cache.segment_store import FANOUT, SegmentStore
from pipeline.cache.vectors import VectorCache


def vector(i: int, dims: int = 8) -> np.ndarray:
    return np.full(dims, i + 1, dtype=np.float32)


def segment_files(cache_path: Path) -> list[Path]:
    return sorted((cache_path / "segments").rglob("*.seg"))


def test_many_small_writes_are_merged_into_few_files_and_every_vector_is_found(tmp_path):
    cache = VectorCache(tmp_path / "c", "ns:8", 8)
    texts = [f"text {i}" for i in range(FANOUT**2 * 3 * 10)]
    for start in range(0, len(texts), 10):  # 192 writes of 10
        cache.put_many({text: vector(int(text.split()[1])) for text in texts[start : start + 10]})
    cache.close()  # stops merging: what is merged so far stays
    files = segment_files(tmp_path / "c")
    assert len(files) < 3 * FANOUT, [f.name for f in files]  # tiers of fewer than FANOUT files each
    found = VectorCache(tmp_path / "c", "ns:8", 8).get_many(texts)
    assert len(found) == len(texts) and all(found[t][0] == int(t.split()[1]) + 1 for t in texts)
    assert not list((tmp_path / "c").rglob("*.tmp"))


@pytest.mark.parametrize("window_bytes", [65_536, segments._WINDOW_BYTES])  # windows of 910 records, or one of all
@pytest.mark.parametrize(
    "asked",
    [
        "every key",  # records side by side: read a window at a time
        "every 50th key",  # 3.6 KB apart: still read a window at a time
        "every 200th key",  # 14 KB apart: read one by one
        "the first 1,000 keys and every 200th after",  # both, in one lookup
        "keys and absent keys, shuffled",
        "one key",
    ],
)
def test_a_store_finds_each_asked_key_with_its_own_vector(tmp_path, monkeypatch, asked, window_bytes):
    monkeypatch.setattr(segments, "_WINDOW_BYTES", window_bytes)
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 2**63, size=(5_000, 2), dtype=np.uint64)
    keys[1:200:2, 0] = keys[:200:2, 0]  # pairs sharing a high half: told apart by the low one
    keys = keys[np.argsort(keys[:, 0], kind="stable")]  # in file order: the nth key is the file's nth record
    vectors = rng.standard_normal((len(keys), 16)).astype(np.float32)  # records of 72 bytes
    store = SegmentStore(tmp_path / "s", 16)
    store.add(keys[:, 0].copy(), keys[:, 1].copy(), vectors)
    picks = {
        "every key": np.arange(len(keys)),
        "every 50th key": np.arange(0, len(keys), 50),
        "every 200th key": np.arange(0, len(keys), 200),
        "the first 1,000 keys and every 200th after": np.r_[np.arange(1_000), np.arange(1_000, len(keys), 200)],
        "keys and absent keys, shuffled": rng.permutation(len(keys) + 300)[:2_000],
        "one key": np.array([4_321]),
    }[asked]
    absent = rng.integers(0, 2**63, size=(300, 2), dtype=np.uint64)
    asked_keys = np.concatenate([keys, absent])[picks]
    found = store.find(asked_keys[:, 0].copy(), asked_keys[:, 1].copy())
    store.close()
    assert sorted(found.positions.tolist()) == np.flatnonzero(picks < len(keys)).tolist()
    np.testing.assert_array_equal(found.vectors, vectors[picks[found.positions]])


@pytest.mark.parametrize(
    ("keys", "most_bytes_a_key"),
    [(1_000, 6.5), (300_000, 4.25)],  # a file of 2^18 keys or more keeps 2 bytes of each key's top bits, not 4
)
def test_a_process_holds_a_few_bytes_a_key_in_memory_to_find_them(tmp_path, keys, most_bytes_a_key):
    cache = VectorCache(tmp_path / "c", "ns:4", 4)
    texts = [f"text {i}" for i in range(keys)]
    cache.put_many(dict(zip(texts, np.ones((keys, 4), np.float32))))
    assert len(cache.get_many(texts[::97])) == len(texts[::97])
    assert keys * 1.25 < cache.index_bytes <= keys * most_bytes_a_key  # the Bloom filter alone is 1.25
    cache.close()


def test_opening_a_large_file_takes_little_more_memory_than_it_keeps(tmp_path):
    keys = 4_000_000  # built from every key's top bits at once, the index took 19 bytes a key for a moment
    high = np.arange(keys, dtype=np.uint64) * np.uint64(2**64 // keys)  # spread as sha256 bits are
    path = segments.write_segment(tmp_path, 3, high, high, np.ones((keys, 1), np.float32))
    del high
    tracemalloc.start()
    try:
        segment = segments.Segment(path, 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    kept = segment.index.nbytes + segment.filter.nbytes  # about 4 bytes a key
    assert peak < kept + 20 * 2**20  # and one slice of keys' temporaries


def test_the_files_a_merge_replaced_are_let_go_before_the_merged_file_opens(tmp_path, monkeypatch):
    monkeypatch.setattr(SegmentStore, "_merge_soon", lambda self: None)  # merged below, on this thread
    store, rng = SegmentStore(tmp_path, 4), np.random.default_rng(5)
    for _ in range(FANOUT):
        store.add(*rng.integers(0, 2**64 - 1, (2, 100), dtype=np.uint64), np.ones((100, 4), np.float32))
    replaced = [weakref.ref(segment) for segment in store.segments()]
    held_as_it_opens, opening = [], segment_store.Segment

    def noting_what_is_held(path, dimensions):
        held_as_it_opens.append(sum(segment() is not None for segment in replaced))
        return opening(path, dimensions)

    monkeypatch.setattr(segment_store, "Segment", noting_what_is_held)
    assert store.merge_once(threading.Event(), 0)
    assert [segment.tier for segment in store.segments()] == [1]
    assert held_as_it_opens == [0]  # at 10^8 keys, both sets of indexes held at once were 280 MB more
    store.close()


def test_a_vector_stored_again_after_a_bad_one_is_the_one_found_after_merging(tmp_path):
    cache = VectorCache(tmp_path / "c", "ns:8", 8)
    cache.put_many({"t": np.zeros(8)})  # bad: all zeros
    assert cache.lookup(["t"]).bad == ["t"]
    cache.put_many({"t": vector(6)})
    for i in range(FANOUT * 2):  # enough new segments to merge the two above into one
        cache.put_many({f"filler {i}": vector(i)})
    cache.close()
    again = VectorCache(tmp_path / "c", "ns:8", 8)
    assert again.get_many(["t"])["t"][0] == 7 and again.lookup(["t"]).bad == []


def test_a_vector_another_process_stores_is_found_by_a_handle_opened_before(tmp_path):
    mine = VectorCache(tmp_path / "c", "ns:8", 8)
    assert mine.get_many(["theirs"]) == {}
    script = (
        "import numpy as np, sys\nfrom pipeline.cache.vectors import VectorCache\n"
        "c = VectorCache(sys.argv[1], 'ns:8', 8)\nc.put_many({'theirs': np.full(8, 3.0)})\nc.close()\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "c")], check=True, cwd=Path(__file__).parents[3])
    assert mine.get_many(["theirs"])["theirs"][0] == 3.0


def test_a_merge_given_up_at_close_leaves_no_temporary_file_and_loses_nothing(tmp_path, monkeypatch):
    store = SegmentStore(tmp_path / "s", 4)
    keys = np.random.default_rng(1).integers(0, 2**63, size=(FANOUT * 100, 2), dtype=np.uint64)
    monkeypatch.setattr(segments, "MERGE_BYTES", 64)  # a slice a row or so: the merge has many steps
    for part in np.split(keys, FANOUT):
        segments.write_segment(tmp_path / "s", 0, part[:, 0], part[:, 1], np.ones((len(part), 4), np.float32))
    stop = threading.Event()
    stop.set()
    assert store.merge_once(stop) is False
    assert len(list((tmp_path / "s").glob("*.seg"))) == FANOUT and not list((tmp_path / "s").glob("*.tmp"))
    assert len(store.find(keys[:, 0].copy(), keys[:, 1].copy()).positions) == len(keys)


@pytest.mark.parametrize("merge_bytes", [64, 4096, segments.MERGE_BYTES])  # many slices, some empty; a few; one
def test_a_merge_in_slices_keeps_every_key_once_with_its_newest_vector(tmp_path, monkeypatch, merge_bytes):
    monkeypatch.setattr(segments, "MERGE_BYTES", merge_bytes)
    rng = np.random.default_rng(merge_bytes)
    keys = rng.integers(0, 2**64 - 1, size=(FANOUT * 50, 2), dtype=np.uint64)
    keys[:20, 0] = (keys[:20, 0] >> np.uint64(32)) << np.uint64(32)  # on a slice's first key
    keys[20:40, 0] = keys[40:60, 0]  # sharing a high half with another key
    keys[60:70, 0] = np.uint64(2**64 - 1)
    directory = tmp_path / "s"
    directory.mkdir()
    for n, part in enumerate(np.split(keys, FANOUT)):
        segments.write_segment(directory, 0, part[:, 0], part[:, 1], np.full((len(part), 4), n + 1, np.float32))
    again = keys[::7]  # stored again, newer: these vectors win
    segments.write_segment(directory, 0, again[:, 0], again[:, 1], np.full((len(again), 4), 99, np.float32))
    store = SegmentStore(directory, 4)
    while store.merge_once(threading.Event()):
        pass
    files = store.segments()
    assert len(files) == 1 and files[0].rows == len(keys) + len(again)  # every row once, the older copy too
    stored = files[0].read_keys(0, files[0].rows)
    assert bool((stored[1:] >= stored[:-1]).all())
    found = store.find(keys[:, 0].copy(), keys[:, 1].copy())
    by_key = dict(zip(found.positions.tolist(), found.vectors[:, 0].tolist()))
    assert by_key == {i: 99.0 if i % 7 == 0 else float(i // 50 + 1) for i in range(len(keys))}


def test_an_hour_old_temporary_file_of_a_dead_process_is_removed_by_the_next_merge(tmp_path):
    store = SegmentStore(tmp_path / "s", 4)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / "s" / f"1-0-{dead.stdout.strip()}-ab.seg.{dead.stdout.strip()}.tmp"
    live = tmp_path / "s" / f"0-0-{os.getpid()}-cd.seg.{os.getpid()}.tmp"  # being written by this process
    orphan.write_bytes(b"half a merge")
    live.write_bytes(b"half a write")
    young = tmp_path / "s" / f"1-0-{dead.stdout.strip()}-ef.seg.{dead.stdout.strip()}.tmp"  # maybe another host's
    young.write_bytes(b"being written")
    for old in (orphan, live):
        os.utime(old, (time.time() - 7200, time.time() - 7200))
    store.merge_once(threading.Event())
    assert not orphan.exists() and live.exists() and young.exists()


def damage_newest_segment(cache_path: Path, how: str) -> None:
    newest = max(segment_files(cache_path), key=lambda p: p.name.split("-")[1])
    if how == "cut short":
        os.truncate(newest, newest.stat().st_size - 3)
    else:  # keys out of order: the first key made the largest
        with open(newest, "r+b") as file:
            file.seek(segments.HEADER)
            file.write(b"\xff" * 8)


def test_a_segment_file_that_fails_to_open_never_closes_a_descriptor_twice(tmp_path):
    store = SegmentStore(tmp_path / "s", 8)
    store.add(np.arange(1, 4, dtype=np.uint64), np.arange(3, dtype=np.uint64), np.ones((3, 8), np.float32))
    store.close()
    path = next((tmp_path / "s").glob("*.seg"))
    path.write_bytes(path.read_bytes()[:-1])  # cut short: its header no longer agrees
    with pytest.raises(segments.SegmentDamaged) as failed:
        segments.Segment(path, 8)
    other = os.open(tmp_path / "other", os.O_WRONLY | os.O_CREAT)  # most likely the number the segment had
    try:
        del failed  # the error held the half-opened segment: it goes now
        gc.collect()
        os.fstat(other)  # still open: nothing closed it
    finally:
        os.close(other)


# how the newest segment is damaged -> what check counts, and how many of its two texts a repair keeps
DAMAGE = {
    "cut short": ({"damaged segment files": 1}, 0),  # the whole file: its header cannot be trusted
    "keys out of order": ({"segment files with keys out of order": 1}, 1),  # all but the damaged key's
}


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_segment_is_counted_by_check_and_mended_by_repair(tmp_path, how):
    cache = VectorCache(tmp_path / "c", "ns:8", 8)
    cache.put_many({"a": vector(1), "b": np.full(8, np.nan)})  # a good vector and a bad one, in one file
    cache.put_many({"x": vector(2), "y": vector(3)})
    cache.close()
    damage_newest_segment(tmp_path / "c", how)
    report = check_cache(tmp_path / "c")
    bad, kept = DAMAGE[how]
    assert not report.clean and report.bad == Counter({"not finite": 1, **bad})
    repair_cache(tmp_path / "c")
    assert check_cache(tmp_path / "c").clean
    found = VectorCache(tmp_path / "c", "ns:8", 8).get_many(["a", "b", "x", "y"])
    assert "a" in found and "b" not in found and len({"x", "y"} & set(found)) == kept


def fill_a_tier(store: SegmentStore, directory: Path, files: int) -> None:
    for i in range(files):
        keys = np.random.default_rng(i).integers(0, 2**63, size=(4, 2), dtype=np.uint64)
        segments.write_segment(directory, 0, keys[:, 0], keys[:, 1], np.ones((4, 4), np.float32))


def add_in_a_thread(store: SegmentStore, seed: int = 99) -> threading.Thread:
    keys = np.random.default_rng(seed).integers(0, 2**63, size=(4, 2), dtype=np.uint64)
    thread = threading.Thread(target=store.add, args=(keys[:, 0], keys[:, 1], np.ones((4, 4), np.float32)))
    thread.start()
    return thread


def test_a_writer_waiting_for_merges_goes_on_once_another_process_lets_go_of_the_merge_lock(tmp_path):
    store = SegmentStore(tmp_path / "s", 4)
    fill_a_tier(store, tmp_path / "s", segment_store.MOST_IN_A_TIER)  # merges are behind: a writer waits
    holder = os.open(tmp_path / "s" / ".merging-0", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another process merging here
    writer = add_in_a_thread(store)
    writer.join(timeout=1.5)
    assert writer.is_alive()  # waiting, as it should while the tier is full
    os.close(holder)  # that process stopped without merging this tier
    writer.join(timeout=10)
    assert not writer.is_alive() and len(store.segments()) < segment_store.MOST_IN_A_TIER
    store.close()


def test_a_long_merge_of_large_files_does_not_hold_up_writers_of_small_ones(tmp_path, monkeypatch):
    merge, big_merge_started, let_big_merge_end = segments.merge_segments, threading.Event(), threading.Event()

    def slow_for_tier_1(directory, inputs, stop):  # a tier of large files: seconds, minutes at 10^8 keys
        if inputs[0].tier == 1:
            big_merge_started.set()
            let_big_merge_end.wait(timeout=30)
        return merge(directory, inputs, stop)

    monkeypatch.setattr(segment_store, "merge_segments", slow_for_tier_1)
    store = SegmentStore(tmp_path / "s", 4)
    for i in range(FANOUT):  # a full tier of merged files
        keys = np.random.default_rng(1000 + i).integers(0, 2**63, size=(4, 2), dtype=np.uint64)
        segments.write_segment(tmp_path / "s", 1, keys[:, 0], keys[:, 1], np.ones((4, 4), np.float32))
    writers = [add_in_a_thread(store, seed) for seed in range(1)]
    assert big_merge_started.wait(timeout=10)
    writers += [add_in_a_thread(store, seed) for seed in range(1, 3 * segment_store.MOST_IN_A_TIER)]
    for writer in writers:
        writer.join(timeout=10)
    try:
        assert not any(writer.is_alive() for writer in writers)  # tier 0 merged beside the long merge
        tiers = Counter(segment.tier for segment in store.segments())
        assert tiers[0] < segment_store.MOST_IN_A_TIER and tiers[1] >= FANOUT, tiers  # the long one still going
    finally:
        let_big_merge_end.set()
    store.close()
    assert len(store.segments()) < 3 * FANOUT


def test_a_writer_does_not_wait_for_merges_that_failed(tmp_path, monkeypatch):
    def broken(*args):
        raise ValueError("a bug in a merge")

    monkeypatch.setattr(segment_store, "merge_segments", broken)
    store = SegmentStore(tmp_path / "s", 4)
    fill_a_tier(store, tmp_path / "s", segment_store.MOST_IN_A_TIER)
    writer = add_in_a_thread(store)
    writer.join(timeout=10)
    assert not writer.is_alive() and isinstance(store.merge_failure, ValueError)
    store.close()


WRITER = """
import sys
import numpy as np
from pipeline.cache.vectors import VectorCache

cache, me = VectorCache(sys.argv[1], "ns:8", 8), int(sys.argv[2])
for batch in range(40):  # texts shared by every process, and texts of its own
    texts = [f"shared {batch}-{i}" for i in range(25)] + [f"own {me}-{batch}-{i}" for i in range(25)]
    cache.put_many({t: np.full(8, float(sum(map(ord, t)))) for t in texts})
cache.close()
"""


def test_processes_writing_and_merging_one_cache_at_once_lose_nothing(tmp_path):
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "c"), str(me)], cwd=Path(__file__).parents[3])
        for me in range(3)
    ]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0, 0]
    texts = [f"shared {b}-{i}" for b in range(40) for i in range(25)]
    texts += [f"own {me}-{b}-{i}" for me in range(3) for b in range(40) for i in range(25)]
    found = VectorCache(tmp_path / "c", "ns:8", 8).get_many(texts)
    assert len(found) == len(texts) and all(found[t][0] == sum(map(ord, t)) for t in texts)
    assert len(segment_files(tmp_path / "c")) < 3 * FANOUT and not list((tmp_path / "c").rglob("*.tmp"))


def test_a_lookup_listing_files_a_merge_then_replaces_finds_their_vectors_in_the_merged_file(tmp_path, monkeypatch):
    cache = VectorCache(tmp_path / "c", "ns:8", 8)
    cache.put_many({"a": vector(1)})
    cache.put_many({"b": vector(2)})
    stale = [path.name for path in segment_files(tmp_path / "c")]  # as listed just before a merge
    cache.put_many({"a": vector(1), "b": vector(2)})  # the merge's output, then its inputs go
    for path in segment_files(tmp_path / "c"):
        if path.name in stale:
            path.unlink()
    cache.close()
    listings = iter([stale])
    real = segment_store._segment_names
    monkeypatch.setattr(segment_store, "_segment_names", lambda directory: next(listings, None) or real(directory))
    found = VectorCache(tmp_path / "c", "ns:8", 8).get_many(["a", "b"])
    assert sorted(found) == ["a", "b"]
