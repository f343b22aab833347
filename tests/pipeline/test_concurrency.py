import threading
import time

import pytest

from pipeline.concurrency import prefetch


def test_items_arrive_in_order():
    assert list(prefetch(iter(range(100)), depth=3)) == list(range(100))


def test_producer_error_is_raised_in_the_consumer_after_earlier_items():
    def items():
        yield 1
        raise ValueError("bad file")

    seen = []
    with pytest.raises(ValueError, match="bad file"):
        for item in prefetch(items(), depth=2):
            seen.append(item)
    assert seen == [1]


def test_producer_runs_ahead_but_no_further_than_depth():
    produced = []

    def items():
        for i in range(50):
            produced.append(i)
            yield i

    consumer = prefetch(items(), depth=2)
    assert next(consumer) == 0
    time.sleep(0.2)
    assert 2 <= len(produced) <= 4  # one handed out, two queued, one waiting to be queued
    consumer.close()


def test_stopping_early_stops_the_producer():
    consumer = prefetch(iter(range(10_000)), depth=1)
    next(consumer)
    consumer.close()
    assert not any(t.name == "prefetch" and t.is_alive() for t in threading.enumerate())
