"""The cache's one writer thread: many threads' vectors in few transactions, failures to the callers."""

import threading
import time

import numpy as np
import pytest

from pipeline.cache.vectors import VectorCache
from pipeline.cache.writer import CacheWriter


def test_vectors_from_many_threads_are_all_stored_in_fewer_transactions(tmp_path):
    cache = VectorCache(tmp_path / "c", "ns:4", 4)
    transactions = []
    write = cache._write  # each call is one transaction; the writer starts with the first `put_many`
    cache._write = lambda handed: (transactions.append(sum(len(m) for _, m in handed)), time.sleep(0.02), write(handed))

    def request_thread(n: int) -> None:
        for batch in range(5):
            cache.put_many({f"t{n}-{batch}-{i}": np.full(4, 1.0 + i, dtype=np.float32) for i in range(10)})

    threads = [threading.Thread(target=request_thread, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    texts = [f"t{n}-{batch}-{i}" for n in range(8) for batch in range(5) for i in range(10)]
    assert len(cache.lookup(texts).vectors) == len(texts) == sum(transactions)
    assert len(transactions) < 8 * 5, "every thread's every batch was its own transaction"
    cache.close()


def test_a_failed_write_is_raised_to_its_caller_and_later_writes_go_on():
    written, failing = [], {"now": True}

    def write(rows):
        if failing["now"]:
            raise OSError("disk full")
        written.extend(rows)

    writer: CacheWriter[int] = CacheWriter(write, finish=lambda: None)
    writer.put([1, 2])
    with pytest.raises(OSError, match="disk full"):
        writer.flush()
    failing["now"] = False
    writer.put([3])
    writer.flush()
    writer.close()
    assert written == [3]


def test_closing_writes_what_is_pending_and_finishes_on_the_writer_thread():
    written, finished_on = [], []
    writer: CacheWriter[int] = CacheWriter(
        lambda rows: (time.sleep(0.05), written.extend(rows)), finish=lambda: finished_on.append(threading.current_thread())
    )
    for n in range(3):
        writer.put([n])
    writer.close()
    assert written == [0, 1, 2] and finished_on and finished_on[0] is not threading.current_thread()
