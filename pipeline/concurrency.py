"""Run a producer ahead of its consumer, in bounded memory."""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


def prefetch(items: Iterable[T], depth: int) -> Iterator[T]:
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
        except BaseException as exc:  # handed to the consumer, raised there
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
