"""The segments of one namespace and size: lookups across them, new ones, and merges.

Segments of a tier are merged in the background once there are `FANOUT` of them, so a lookup
searches a few files; a writer that gets a tier's `MOST_IN_A_TIER` ahead of the merges waits. Each
tier merges on a thread of its own: merging the largest files takes seconds (minutes at 10^8 keys),
and the new files a writer makes meanwhile are merged beside it rather than held up behind it.
Files appear by rename and go by unlink, so readers in other threads and processes never see half
a file, and one that opened a file before a merge removed it keeps reading it. One process at a
time merges a tier (a lock file a tier); a reader sees a new file at its next lookup (the directory's mtime).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.cache.segments import MergeStopped, Segment, SegmentDamaged, merge_segments, stamp_of, write_segment

log = logging.getLogger("embedpipe")

FANOUT = 8  # segments of one tier merged into one of the next
MOST_IN_A_TIER = 2 * FANOUT  # segments of a tier a writer may get ahead of the merges before it waits
_MTIME_GRANULARITY_NS = 2_000_000_000  # a directory listed sooner after a change is listed again next time
_ORPHAN_AGE_S = 3600  # a temporary file older than this, of a process gone, was left by a crash
_F4 = np.dtype("<f4")


@dataclass(frozen=True)
class Found:
    """Of the keys looked up, the positions of those found, and their vectors in that order."""

    positions: np.ndarray
    vectors: np.ndarray


class SegmentStore:
    """The segments of one namespace and size in `directory`: lookups, new segments, and merges on
    threads of their own (one a tier), started as new segments fill a tier."""

    def __init__(self, directory: Path, dimensions: int):
        self.directory, self.dimensions = directory, dimensions
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.damaged: list[SegmentDamaged] = []  # left out of lookups: `embedpipe cache repair` drops them
        # The directory's mtime when listed (None where too recent to trust: list again) and its
        # segments: one pair, read and replaced whole, so that no reader takes a listing half made.
        self._listing: tuple[int | None, tuple[Segment, ...]] = (None, ())
        self._relist = False  # a file was added or merged here: list again, whatever the mtime
        self._refreshing = threading.Lock()
        self._mergers: dict[int, threading.Thread] = {}  # tier -> the thread merging it
        self._starting = threading.Lock()  # held while merge threads are started or collected
        self._stop = threading.Event()
        self._merged = threading.Condition()  # told after each merge
        self.merge_failure: Exception | None = None  # the last merge's error, if it failed: logged, tried again

    def find(self, high: np.ndarray, low: np.ndarray) -> Found:
        """The vectors of those keys that any segment holds, newest segment first."""
        positions, vectors, left = [np.empty(0, np.intp)], [np.empty((0, self.dimensions), _F4)], np.arange(len(high))
        for segment in reversed(self.segments()):
            at, found = segment.find(high[left], low[left])
            if len(at):
                positions.append(left[at])
                vectors.append(found)
                left = np.delete(left, at)
            if not len(left):
                break
        return Found(np.concatenate(positions), np.concatenate(vectors))

    @property
    def index_bytes(self) -> int:
        """Bytes this process holds in memory to find keys: each segment's index and Bloom filter."""
        return sum(segment.index.nbytes + segment.filter.nbytes for segment in self.segments())

    def add(self, high: np.ndarray, low: np.ndarray, vectors: np.ndarray) -> None:
        """Store these keys and vectors as a new segment, readable by every process on return;
        wait first while the merges are behind (a tier of `MOST_IN_A_TIER`: lookups would slow)."""
        if not len(high):
            return
        with self._merged:
            while self._merges_behind() and self._merging():
                self._merge_soon()  # again each pass: the merge lock may have been another process's
                self._merged.wait(timeout=1.0)
        write_segment(self.directory, 0, high, low, vectors)
        self._relist = True  # a coarse mtime may not show the new file
        self._merge_soon()

    def _merging(self) -> bool:
        """Whether merges can still catch up: none failed and the store is open."""
        return self.merge_failure is None and not self._stop.is_set()

    def _merges_behind(self) -> bool:
        return any(count >= MOST_IN_A_TIER for count in self._tier_sizes().values())

    def _tier_sizes(self) -> dict[int, int]:
        """Segments a tier, of the tiers there are."""
        tiers = [segment.tier for segment in self.segments()]
        return {tier: tiers.count(tier) for tier in set(tiers)}

    def segments(self) -> tuple[Segment, ...]:
        """The segments on disk now, oldest first, each opened once."""
        current = self._listed_if_current()
        if current is not None:
            return current
        with self._refreshing:
            self._relist = False  # from here on, a file added sets it again
            opened = {s.path.name: s for s in self._listing[1]}
            listed = None
            while listed is None:  # a file merged away since the listing: its rows are in one listed again
                mtime = os.stat(self.directory).st_mtime_ns
                listed = self._open_listed(opened)
            segments, self.damaged = listed
            # an mtime within the clock's granularity of now may not change again for a file added next
            self._listing = (mtime if time.time_ns() - mtime > _MTIME_GRANULARITY_NS else None, segments)
        return segments

    def _listed_if_current(self) -> tuple[Segment, ...] | None:
        """The segments last listed, if the directory has not changed since (no local of the caller
        holds them while it lists again: those a merge replaced can go before their successor opens)."""
        mtime, segments = self._listing
        if not self._relist and mtime is not None and os.stat(self.directory).st_mtime_ns == mtime:
            return segments
        return None

    def _open_listed(self, opened: dict[str, Segment]) -> tuple[tuple[Segment, ...], list[SegmentDamaged]] | None:
        """The segments listed now, oldest first, and the damaged ones left out; None where a listed
        file went before it was opened (a merge replaced it by a file this listing may lack).
        Each file opened is added to `opened`, for the next listing. Files merged away are let go
        first, before the file that replaced them opens: their indexes and its are then not all
        held at once (at 10^8 keys, 280 MB each), unless a lookup under way still holds them."""
        names = sorted(_segment_names(self.directory), key=_age)
        if gone := opened.keys() - set(names):
            for name in gone:
                del opened[name]
            self._listing = (None, tuple(s for s in self._listing[1] if s.path.name not in gone))  # None: list again
        fresh, damaged = [], []
        for name in names:
            try:
                if name not in opened:
                    opened[name] = Segment(self.directory / name, self.dimensions)
                fresh.append(opened[name])
            except FileNotFoundError:
                return None
            except SegmentDamaged as exc:
                damaged.append(exc)
                if name not in {d.path.name for d in self.damaged}:  # said once a file
                    log.warning(
                        "cache %s: segment %s; its vectors are embedded again. `embedpipe cache repair` drops it",
                        self.directory,
                        exc,
                    )
        return tuple(fresh), damaged

    def close(self) -> None:
        """Stop merging: a merge under way is given up and leaves nothing."""
        with self._starting:
            self._stop.set()
            mergers = list(self._mergers.values())
        with self._merged:
            self._merged.notify_all()
        for merger in mergers:
            merger.join()

    def _merge_soon(self) -> None:
        """Start a merge thread for each tier of `FANOUT` segments or more that has none running."""
        with self._starting:
            for tier, count in self._tier_sizes().items():
                merger = self._mergers.get(tier)
                if count < FANOUT or self._stop.is_set() or (merger is not None and merger.is_alive()):
                    continue
                merger = threading.Thread(target=self._merge_tier, args=(tier,), name=f"embedpipe-merge-{tier}")
                self._mergers[tier] = merger
                merger.daemon = True
                merger.start()

    def _merge_tier(self, tier: int) -> None:
        """Merge `tier` until it has fewer than `FANOUT` segments, or another process merges it."""
        try:
            while not self._stop.is_set() and self.merge_once(self._stop, tier):
                self.merge_failure = None
                self._merge_soon()  # the merged file may fill the next tier
                with self._merged:
                    self._merged.notify_all()
        except Exception as exc:  # noqa: BLE001  a full disk, or worse: the segments stay as they are, all readable
            if self.merge_failure is None:  # once a store: it is tried again at every new segment
                log.warning(
                    "cache %s: could not merge segments (%s); lookups stay correct, slower", self.directory, exc
                )
            self.merge_failure = exc
            with self._merged:
                self._merged.notify_all()

    def merge_once(self, stop: threading.Event, tier: int | None = None) -> bool:
        """Merge every segment of `tier` if it has `FANOUT` or more (all of them: a merge that fell
        behind catches up in one pass); without `tier`, of the lowest such tier that no other thread
        or process is merging. Whether it merged."""
        _remove_orphans(self.directory)  # of processes gone: no lock needed
        tiers = [tier] if tier is not None else sorted(t for t, count in self._tier_sizes().items() if count >= FANOUT)
        for candidate in tiers:
            with _merge_lock(self.directory, candidate) as held:
                if held:
                    return self._merge_held(candidate, stop)
        return False

    def _merge_held(self, tier: int, stop: threading.Event) -> bool:
        """`merge_once` of `tier`, its lock held: its segments are listed again under it."""
        inputs = [segment for segment in self.segments() if segment.tier == tier]
        if len(inputs) < FANOUT:  # another thread or process merged them before we held the lock
            return False
        try:
            merge_segments(self.directory, inputs, stop)
        except MergeStopped:
            return False
        _sync_directory(self.directory)  # the merged file's name on disk before its inputs go
        for segment in inputs:
            segment.path.unlink(missing_ok=True)
        self._relist = True
        return True


def _segment_names(directory: Path) -> list[str]:
    return [entry.name for entry in os.scandir(directory) if entry.name.endswith(".seg")]


def _age(name: str) -> tuple[int, int]:
    """Oldest first, by the time in the name: a merged file's is its newest input's, so a vector
    stored again later (over a bad one) stays the newer."""
    return stamp_of(name), int(name.split("-", 1)[0])


@contextlib.contextmanager
def _merge_lock(directory: Path, tier: int):
    """Whether this thread now holds the lock on merging the directory's `tier` (never waits for it)."""
    fd = os.open(directory / f".merging-{tier}", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing lets go of the lock


def _remove_orphans(directory: Path) -> None:
    """Delete temporary files left by processes that died while writing them: an hour old and
    their process gone (a process of another host or container sharing the directory looks gone)."""
    for entry in os.scandir(directory):
        pid = entry.name.rsplit(".", 2)[-2] if entry.name.endswith(".tmp") else ""
        with contextlib.suppress(FileNotFoundError):
            if pid.isdigit() and time.time() - entry.stat().st_mtime > _ORPHAN_AGE_S and not _alive(int(pid)):
                os.unlink(entry.path)


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
