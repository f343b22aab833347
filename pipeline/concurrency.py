"""Run a producer ahead of its consumer, in bounded memory."""

from __future__ import annotations

import queue
import sys
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")
_DONE = object()


def map_ahead(fn: Callable[[T], R], items: Iterable[T], ahead: int) -> Generator[tuple[T, R]]:
    """Yield `(item, fn(item))` in order, with up to `ahead` calls running at once in threads:
    the next item's requests leave while the last ones of this item are still in flight.

    The first failure is raised in order; calls already running are waited for."""
    pool = ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="complete")
    running: deque = deque()
    try:
        for item in items:
            running.append((item, pool.submit(fn, item)))
            if len(running) == ahead:
                item, future = running.popleft()
                yield item, future.result()
        while running:
            item, future = running.popleft()
            yield item, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def in_background(fn: Callable[..., R], *args, **kwargs) -> Future:
    """Start `fn(*args, **kwargs)` in a thread of its own; its result waits in the future."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="background")
    try:
        return pool.submit(fn, *args, **kwargs)
    finally:
        pool.shutdown(wait=False)  # the call still runs; the thread ends with it


def prompt_thread_switches(seconds: float = 0.0005) -> None:
    """Let a thread back from a socket call take the interpreter within `seconds`, not
    Python's default 5 ms. While the reading thread keeps the interpreter busy, a request
    thread waits that long at every return from the network, which delays each request by
    tens of milliseconds. Process-wide; only ever lowered."""
    sys.setswitchinterval(min(sys.getswitchinterval(), seconds))


def holding(lock: threading.Lock, items: Iterable[T]) -> Generator[T]:
    """Yield `items` holding `lock`, from the first item asked for until the last is taken or the
    consumer stops: another thread's `holding` the same lock waits until then."""
    with lock:
        yield from items


def prefetch(items: Iterable[T], depth: int) -> Generator[T]:
    """Yield `items`, computed up to `depth` ahead in a background thread.

    An exception in the producer is raised in the consumer, in order. If the consumer stops
    early the producer stops at its next item.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    source = iter(items)

    def produce() -> None:
        try:
            while not stop.is_set():  # checked before each item's work, not after
                try:
                    item = next(source)
                except StopIteration:
                    break
                slots.put((item, None))
            slots.put((_DONE, None))
        except BaseException as exc:  # noqa: BLE001  handed to the consumer, raised there
            slots.put((_DONE, exc))
        finally:
            getattr(source, "close", lambda: None)()  # release the open reader

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
