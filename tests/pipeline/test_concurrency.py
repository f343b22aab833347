import threading
import time

import pytest

from pipeline.concurrency import holding, map_ahead, prefetch


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
    before = set(threading.enumerate())  # another test's run may have left one of its own
    consumer = prefetch(iter(range(10_000)), depth=1)
    next(consumer)
    consumer.close()
    assert not any(t.name == "prefetch" and t.is_alive() for t in set(threading.enumerate()) - before)


def test_map_ahead_keeps_order_and_starts_the_next_call_before_the_last_one_ends():
    running, most = set(), []

    def slow(item):
        running.add(item)
        most.append(len(running))
        time.sleep(0.05 if item % 2 == 0 else 0.01)
        running.discard(item)
        return item * 10

    assert list(map_ahead(slow, range(8), ahead=2)) == [(i, i * 10) for i in range(8)]
    assert max(most) == 2


def test_map_ahead_raises_the_first_failure_in_order():
    def fail_on_three(item):
        if item == 3:
            raise ValueError("bad batch")
        return item

    seen = []
    with pytest.raises(ValueError, match="bad batch"):
        for item, _ in map_ahead(fail_on_three, range(10), ahead=2):
            seen.append(item)
    assert seen == [0, 1, 2]


@pytest.mark.parametrize("first_stops_early", [False, True])
def test_a_second_reader_holding_the_lock_starts_once_the_first_has_read_all_or_stopped(first_stops_early):
    lock, events = threading.Lock(), []

    def reader(name):
        for i in range(3):
            events.append((name, i))
            yield i

    first = prefetch(holding(lock, reader("first")), depth=1)
    assert next(first) == 0
    second = prefetch(holding(lock, reader("second")), depth=1)
    time.sleep(0.1)
    assert ("second", 0) not in events  # waiting for the first to finish reading
    if first_stops_early:
        first.close()
    else:
        assert list(first) == [1, 2]
    assert list(second) == [0, 1, 2]
    assert events.index(("second", 0)) > max(events.index(e) for e in events if e[0] == "first")
