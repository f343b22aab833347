"""One thread that writes a cache: request threads hand their vectors over and go on.

Eight request threads each writing its own answer would queue on SQLite's one write lock, a
transaction each. Here they queue nothing: the writer takes whatever has been handed over
since its last write, all of it in one transaction, while they wait on the network. Memory
stays bounded: a caller waits when `most_pending` handovers are not yet written.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

Row = TypeVar("Row")


class CacheWriter(Generic[Row]):
    """Writes rows through `write` (one call, one transaction) on its own thread, and calls
    `finish` there once closed (a SQLite connection is closed by the thread that opened it).
    A write that fails is raised to the callers of `flush` waiting for it, or else to the next
    caller of `put` or `flush`; the writes after it are tried as usual."""

    def __init__(self, write: Callable[[list[Row]], None], finish: Callable[[], None], most_pending: int = 64):
        self._write, self._finish = write, finish
        self._most_pending = most_pending
        self._pending: list[list[Row]] = []
        self._handed = self._written = 0  # handovers so far, and of those, written
        self._failure: BaseException | None = None  # the last write's that failed
        self._failures = 0  # writes that failed so far
        self._unreported = False  # whether no caller was told of the last failure yet
        self._closing = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._write_until_closed, name="embedpipe-cache-writer", daemon=True)
        self._thread.start()

    def put(self, rows: list[Row]) -> None:
        """Hand `rows` over to be written; returns at once unless too many wait already."""
        with self._changed:
            while len(self._pending) >= self._most_pending:
                self._changed.wait()
            if self._unreported:
                self._raise_failure()
            self._pending.append(rows)
            self._handed += 1
            self._changed.notify_all()

    def flush(self) -> None:
        """Return once every row handed over so far is written (or raise why it was not)."""
        with self._changed:
            handed, failures = self._handed, self._failures
            while self._written < handed:
                self._changed.wait()
            if self._unreported or self._failures != failures:
                self._raise_failure()

    def close(self) -> None:
        """Write what is pending, then stop the thread; raises a failure not yet raised."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join()
        with self._changed:
            if self._unreported:
                self._raise_failure()

    def _raise_failure(self) -> None:  # under the lock
        self._unreported = False
        assert self._failure is not None
        raise self._failure

    def _write_until_closed(self) -> None:
        try:
            self._write_pending()
        finally:
            self._finish()

    def _write_pending(self) -> None:
        while True:
            with self._changed:
                while not self._pending and not self._closing:
                    self._changed.wait()
                if not self._pending:
                    return
                handovers, self._pending = self._pending, []
                self._changed.notify_all()  # room for callers waiting in `put`
            failure = None
            try:
                self._write([row for rows in handovers for row in rows])
            except BaseException as exc:  # noqa: BLE001  raised to the callers, in their threads
                failure = exc
            with self._changed:
                if failure is not None:
                    self._failure, self._failures, self._unreported = failure, self._failures + 1, True
                self._written += len(handovers)
                self._changed.notify_all()
