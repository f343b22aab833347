"""Vectors in sorted segment files: inserts that cost the same at 10^8 keys as at 10^3 (issue 20).

A segment is one immutable file: a 32-byte header, then its keys (the first 16 bytes of each text's
sha256, as two uint64 columns, sorted by the first) and its vectors (float32, in the keys' order).
A batch of vectors is one new segment, written in one sequential pass, where a SQLite row per
vector dirtied a random page of the key index each (80 µs a key at 7 M keys). Segments of a tier
are merged eight at a time in the background, so a lookup searches a few files, each by a binary
search of the whole batch of keys at once.

Files appear by rename and go by unlink, so readers in other threads and processes never see half
a file: a reader that opened one before a merge removed it keeps reading it. One process at a time
merges (a lock file); a reader sees a new file at its next lookup (the directory's mtime).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("embedpipe")

MAGIC = b"EPVSEG01"
HEADER = 32  # magic, rows (u8), dimensions (u4), 12 bytes reserved
DIGEST = 16  # bytes of a text's sha256 that key its vector: two uint64 columns
FANOUT = 8  # segments of one tier merged into one of the next
MERGE_BYTES = 16 * 2**20  # of keys and vectors held at once by a merge: one slice of the key space
BLOCK = 64  # keys a lookup reads in a segment: one 512-byte run of its first key column
_FIND_CHUNK = 4096  # keys matched against their blocks at a time
RELEASE_EVERY = 512  # keys looked up in any segments before their pages are handed back
_MTIME_GRANULARITY_NS = 50_000_000  # a directory listed sooner after a change is listed again next time
_U8 = np.dtype("<u8")
_F4 = np.dtype("<f4")


@dataclass(frozen=True)
class Found:
    """Of the keys looked up, the positions of those found, and their vectors in that order."""

    positions: np.ndarray
    vectors: np.ndarray


def key_columns(digests: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The (high, low) uint64 columns of concatenated 16-byte digests."""
    pairs = np.frombuffer(digests, dtype=_U8).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]


class Segment:
    """One segment file, mapped read-only. Its pages are handed back to the kernel as lookups go,
    so a cache of many gigabytes costs this process little resident memory."""

    def __init__(self, path: Path, dimensions: int):
        self.path = path
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            header = file.read(HEADER)
            self.rows = _rows_in(header, size, dimensions, path)
            self._map = mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ) if self.rows else None
        self.tier = int(path.name.split("-", 1)[0])
        self.dimensions = dimensions
        buffer = self._map if self._map is not None else b""
        n = self.rows
        self.high = np.frombuffer(buffer, dtype=_U8, count=n, offset=HEADER) if n else np.empty(0, _U8)
        self.low = np.frombuffer(buffer, dtype=_U8, count=n, offset=HEADER + 8 * n) if n else np.empty(0, _U8)
        vectors = np.frombuffer(buffer, dtype=_F4, count=n * dimensions, offset=HEADER + 16 * n) if n else None
        self.vectors = vectors.reshape(n, dimensions) if vectors is not None else np.empty((0, dimensions), _F4)
        self._fence = self.high[::BLOCK].copy()  # each block's first key: the in-memory index
        if self._map is not None:  # a key's page only: read-ahead and fault-around would map whole files
            self._map.madvise(mmap.MADV_RANDOM)
        self.probed = 0  # keys looked up here since the pages were last handed back
        self.release_pages()

    def find(self, high: np.ndarray, low: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions among the keys given, rows here) of the keys this segment holds. Where a key
        is here twice (stored again after a bad vector), the last, newest, is the one found.

        Each key reads one block of `BLOCK` keys, found through the block's first keys held in
        memory: a binary search of the mapped file would read about 20 pages a key."""
        if not self.rows or not len(high):
            return np.empty(0, np.intp), np.empty(0, np.intp)
        rows = np.empty(len(high), np.intp)
        for start in range(0, len(high), _FIND_CHUNK):  # a (keys x BLOCK) matrix at a time: memory stays small
            part = high[start : start + _FIND_CHUNK]
            first = np.maximum(np.searchsorted(self._fence, part, side="right") - 1, 0) * BLOCK
            block = first[:, None] + np.arange(BLOCK)
            keys = self.high[np.minimum(block, self.rows - 1)]
            rows[start : start + len(part)] = first + ((keys <= part[:, None]) & (block < self.rows)).sum(axis=1) - 1
        at = np.maximum(rows, 0)
        hit = (rows >= 0) & (self.high[at] == high) & (self.low[at] == low)
        return np.flatnonzero(hit), rows[hit]

    def read_rows(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of rows `first` to `last` (high, low, vectors), read from the file rather than
        through the mapping: a merge reads every row once, and mapped they would all stay resident."""
        count, width = last - first, 4 * self.dimensions
        with open(self.path, "rb") as file:
            high = _read_at(file, HEADER + 8 * first, count * 8).view(_U8)
            low = _read_at(file, HEADER + 8 * (self.rows + first), count * 8).view(_U8)
            vectors = _read_at(file, HEADER + 16 * self.rows + width * first, count * width).view(_F4)
        return high, low, vectors.reshape(count, self.dimensions)

    def release_pages(self) -> None:
        """Hand this process's copies of the pages read so far back to the kernel (they stay in the
        page cache): lookups would otherwise map whole files into resident memory."""
        if self._map is not None:
            self._map.madvise(mmap.MADV_DONTNEED)
        self.probed = 0


def _read_at(file, offset: int, size: int) -> np.ndarray:
    """`size` bytes of `file` from `offset`, into a fresh array."""
    data = np.empty(size, np.uint8)
    file.seek(offset)
    if file.readinto(data.data) != size:
        raise OSError(f"{file.name}: shorter than its header says")
    return data


def _rows_in(header: bytes, size: int, dimensions: int, path: Path) -> int:
    """Rows of a segment file whose header and size agree; a `SegmentDamaged` where they do not."""
    if len(header) < HEADER or header[:8] != MAGIC:
        raise SegmentDamaged(path, "not a segment file")
    rows, dims = int.from_bytes(header[8:16], "little"), int.from_bytes(header[16:20], "little")
    if dims != dimensions:
        raise SegmentDamaged(path, f"{dims} dimensions, not {dimensions}")
    if size != HEADER + rows * (DIGEST + 4 * dimensions):
        raise SegmentDamaged(path, f"{size:,} bytes for {rows:,} rows: cut short")
    return rows


class SegmentDamaged(Exception):
    """A segment file whose header or size is wrong: left out of lookups, dropped by a repair."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path.name}: {why}")
        self.path, self.why = path, why


def write_segment(directory: Path, tier: int, high: np.ndarray, low: np.ndarray, vectors: np.ndarray) -> Path:
    """A new segment of these keys and vectors in `directory`, sorted, written whole under a
    temporary name and then renamed into place; nothing is left behind where it fails."""
    order = np.argsort(high, kind="stable")
    with _new_file(directory, tier, time.time_ns()) as (file, _, path):
        _write_header(file, len(order), vectors.shape[1])
        for column in (high[order], low[order], np.ascontiguousarray(vectors[order], dtype=_F4)):
            file.write(column.data.cast("B"))
    return path


@contextlib.contextmanager
def _new_file(directory: Path, tier: int, stamp: int):
    """(file, descriptor, final path) of a file written as `<name>.<pid>.tmp`, which readers and
    merges skip, and renamed to its final name once the block ends without an error."""
    path = directory / f"{tier}-{stamp:020d}-{os.getpid()}-{secrets.token_hex(4)}.seg"
    temporary = directory / f"{path.name}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            yield file, fd, path
        os.rename(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _write_header(file, rows: int, dimensions: int) -> None:
    file.write(MAGIC + rows.to_bytes(8, "little") + dimensions.to_bytes(4, "little") + bytes(12))


def merge_segments(directory: Path, segments: list[Segment], stop: threading.Event) -> Path:
    """One segment of everything in `segments` (oldest first), one slice of the key space at a
    time so that memory stays bounded; `MergeStopped` once `stop` is set, leaving nothing."""
    rows, dimensions = sum(s.rows for s in segments), segments[0].dimensions
    slices = max(1, -(-rows * (DIGEST + 4 * dimensions) // MERGE_BYTES))
    bounds = [(2**64 * i) // slices for i in range(slices)]
    done, stamp = 0, max(_stamp(s.path.name) for s in segments)  # the newest input's age: see `_age`
    with _new_file(directory, max(s.tier for s in segments) + 1, stamp) as (file, fd, path):
        _write_header(file, rows, dimensions)
        file.flush()
        for i, start in enumerate(bounds):
            if stop.is_set():
                raise MergeStopped
            end = bounds[i + 1] if i + 1 < slices else None
            done += _merge_slice(fd, segments, start, end, rows, done)
        if done != rows:  # every input row once: the header's count must hold
            raise OSError(f"merged {done:,} rows of {rows:,}")
    return path


class MergeStopped(Exception):
    """A merge given up because its store is closing."""


def _merge_slice(fd: int, segments: list[Segment], start: int, end: int | None, rows: int, done: int) -> int:
    """Write the keys in [start, end) of every segment, sorted, at row `done` of a merged file of
    `rows` rows; the rows written."""
    parts = []
    for segment in segments:
        first = int(np.searchsorted(segment.high, np.uint64(start), side="left"))
        last = segment.rows if end is None else int(np.searchsorted(segment.high, np.uint64(end), side="left"))
        parts.append(segment.read_rows(first, last))
    high = np.concatenate([p[0] for p in parts])
    order = np.argsort(high, kind="stable")  # stable: of equal keys the newest segment's stays last
    low, vectors = np.concatenate([p[1] for p in parts])[order], np.concatenate([p[2] for p in parts])[order]
    dimensions = vectors.shape[1]
    _write_at(fd, high[order], HEADER + 8 * done)
    _write_at(fd, low, HEADER + 8 * rows + 8 * done)
    _write_at(fd, np.ascontiguousarray(vectors), HEADER + 16 * rows + 4 * dimensions * done)
    return len(order)


def _write_at(fd: int, column: np.ndarray, offset: int) -> None:
    """All of `column` at `offset`: a write the disk cut short (full) is carried on, so that it
    raises, rather than leaving a hole of zeros in a file that is then renamed into place."""
    data = column.data.cast("B")
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


class SegmentStore:
    """The segments of one namespace and size in `directory`: lookups, new segments, and merges on
    a thread of their own, started by the first new segment."""

    def __init__(self, directory: Path, dimensions: int):
        self.directory, self.dimensions = directory, dimensions
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.damaged: list[SegmentDamaged] = []  # left out of lookups: `embedpipe cache repair` drops them
        self._segments: tuple[Segment, ...] = ()
        self._listed_mtime: int | None = None  # the directory's mtime when listed, if old enough to trust
        self._refreshing = threading.Lock()
        self._merger: threading.Thread | None = None
        self._wake, self._stop = threading.Event(), threading.Event()
        self.merge_failure: OSError | None = None  # the last merge's error, if it failed: logged, tried again

    def find(self, high: np.ndarray, low: np.ndarray) -> Found:
        """The vectors of those keys that any segment holds, newest segment first, `RELEASE_EVERY`
        keys at a time; the segments hand back the pages read once they were asked `RELEASE_EVERY`
        keys between them: the kernel maps up to 64 KB around each page read."""
        opened, found = self.segments(), []
        for start in range(0, len(high), RELEASE_EVERY):
            positions, vectors = self._find_in(
                opened, high[start : start + RELEASE_EVERY], low[start : start + RELEASE_EVERY]
            )
            found.append((positions + start, vectors))
        for segment in opened:  # between calls (a batch apart) nothing stays resident
            if segment.probed:
                segment.release_pages()
        if not found:
            return Found(np.empty(0, np.intp), np.empty((0, self.dimensions), _F4))
        return Found(np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found]))

    def _find_in(self, opened: tuple[Segment, ...], high: np.ndarray, low: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        positions, vectors, left = [np.empty(0, np.intp)], [np.empty((0, self.dimensions), _F4)], np.arange(len(high))
        for segment in reversed(opened):
            at, rows = segment.find(high[left], low[left])
            if len(at):
                positions.append(left[at])
                vectors.append(segment.vectors[rows])
                left = np.delete(left, at)
            segment.probed += len(at) + len(left)
            if not len(left):
                break
        if sum(segment.probed for segment in opened) >= RELEASE_EVERY:
            for segment in opened:
                if segment.probed:
                    segment.release_pages()
        return np.concatenate(positions), np.concatenate(vectors)

    def add(self, high: np.ndarray, low: np.ndarray, vectors: np.ndarray) -> None:
        """Store these keys and vectors as a new segment, readable by every process on return."""
        if len(high):
            write_segment(self.directory, 0, high, low, vectors)
            self._merge_soon()

    def segments(self) -> tuple[Segment, ...]:
        """The segments on disk now, oldest first, each opened once."""
        if os.stat(self.directory).st_mtime_ns == self._listed_mtime:
            return self._segments
        with self._refreshing:
            mtime = os.stat(self.directory).st_mtime_ns
            opened = {s.path.name: s for s in self._segments}
            fresh, damaged = [], []
            for name in sorted(_segment_names(self.directory), key=_age):
                try:
                    fresh.append(opened.get(name) or Segment(self.directory / name, self.dimensions))
                except FileNotFoundError:  # merged away since the listing: its rows are in a newer file
                    continue
                except SegmentDamaged as exc:
                    damaged.append(exc)
                    if name not in {d.path.name for d in self.damaged}:  # said once a file
                        log.warning(
                            "cache %s: segment %s; its vectors are embedded again. `embedpipe cache repair` drops it",
                            self.directory,
                            exc,
                        )
            self._segments, self.damaged = tuple(fresh), damaged
            # an mtime within the clock's granularity of now may not change again for a file added next
            self._listed_mtime = mtime if time.time_ns() - mtime > _MTIME_GRANULARITY_NS else None
        return self._segments

    def close(self) -> None:
        """Stop merging: a merge under way is given up and leaves nothing."""
        self._stop.set()
        self._wake.set()
        if self._merger is not None:
            self._merger.join()

    def _merge_soon(self) -> None:
        if self._merger is None:
            self._merger = threading.Thread(target=self._merge_until_stopped, name="embedpipe-merge", daemon=True)
            self._merger.start()
        self._wake.set()

    def _merge_until_stopped(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            try:
                while not self._stop.is_set() and self.merge_once(self._stop):
                    pass
            except OSError as exc:  # a full disk: the segments stay as they are, all readable
                if self.merge_failure is None:  # once a store: it is tried again at every new segment
                    log.warning(
                        "cache %s: could not merge segments (%s); lookups stay correct, slower", self.directory, exc
                    )
                self.merge_failure = exc

    def merge_once(self, stop: threading.Event) -> bool:
        """Merge the oldest `FANOUT` segments of the lowest tier that has that many, unless another
        process is merging here; whether it merged."""
        with _merge_lock(self.directory) as held:
            if not held:
                return False
            _remove_orphans(self.directory)
            by_tier: dict[int, list[Segment]] = {}
            for segment in self.segments():
                by_tier.setdefault(segment.tier, []).append(segment)
            tier = min((t for t, group in by_tier.items() if len(group) >= FANOUT), default=None)
            if tier is None:
                return False
            inputs = by_tier[tier][:FANOUT]
            try:
                merge_segments(self.directory, inputs, stop)
            except MergeStopped:
                return False
            for segment in inputs:
                segment.path.unlink(missing_ok=True)
            return True


def _segment_names(directory: Path) -> list[str]:
    return [entry.name for entry in os.scandir(directory) if entry.name.endswith(".seg")]


def _stamp(name: str) -> int:
    return int(name.split("-", 2)[1])


def _age(name: str) -> tuple[int, int]:
    """Oldest first, by the time in the name: a merged file's is its newest input's, so a vector
    stored again later (over a bad one) stays the newer."""
    return _stamp(name), int(name.split("-", 1)[0])


@contextlib.contextmanager
def _merge_lock(directory: Path):
    """Whether this process now holds the directory's merge lock (never waits for it)."""
    fd = os.open(directory / ".merging", os.O_RDWR | os.O_CREAT, 0o600)
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
    """Delete temporary files left by processes that died while writing them."""
    for entry in os.scandir(directory):
        if entry.name.endswith(".tmp") and not _alive(int(entry.name.rsplit(".", 2)[-2])):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
