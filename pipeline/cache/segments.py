"""Vectors in sorted segment files: inserts that cost the same at 10^8 keys as at 10^3 (issue 20).

A segment is one immutable file: a 32-byte header, then the high halves of its keys (the first 16
bytes of each text's sha256, as two uint64, sorted by the high one), then a record a key: the low
half and the float32 vector. A batch of vectors is one new segment, written in one sequential
pass, where a SQLite row per vector dirtied a random page of the key index each (80 µs a key at
7 M keys). `SegmentStore` (segment_store.py) merges them and finds keys in them.

A reader holds the top 32 bits of a segment's keys in memory (`KeyIndex`: 2.5 to 5 bytes a key)
and a Bloom filter of them that turns away at once most keys the file lacks (1.25 bytes a key),
and reads a found key's record with one `pread`. A key is told by its top 32 and low 64 bits, 96
bits of sha256 (no two of 10^9 texts share them, bar odds of 10^-11). Nothing is mapped, so
lookups leave no file pages in the process's resident memory (mapped, this kernel's large
page-cache folios made a random read of one vector resident as up to 2 MB).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.bloom import BloomFilter
from pipeline.cache.segment_index import TOP, KeyIndex

MAGIC = b"EPVSEG02"
HEADER = 32  # magic, rows (u8), dimensions (u4), 12 bytes reserved
DIGEST = 16  # bytes of a text's sha256 that key its vector: two uint64
# Of keys and vectors a merge reads at once: one slice of the key space. It holds about twice that
# (read, then sorted); at 16 MB its slices were in most of a 10M-row run's new highs of RSS.
MERGE_BYTES = 4 * 2**20
# A window of the file is read whole where its asked records lie closer than _NEAR_BYTES apart on
# average: one `pread` a record costs about 1.1 µs, what copying 15 KB from the page cache does.
_WINDOW_BYTES = 2**20
_NEAR_BYTES = 8192
_KEYS_A_SLICE = 1 << 18  # keys read at once to open a file: 2 MB, and a Bloom filter's temporaries of them
_U8 = np.dtype("<u8")
_F4 = np.dtype("<f4")


def key_columns(digests: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The (high, low) uint64 columns of concatenated 16-byte digests."""
    pairs = np.frombuffer(digests, dtype=_U8).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]


class Segment:
    """One segment file: its keys' top bits in memory, its records read from the file as needed."""

    def __init__(self, path: Path, dimensions: int):
        self.path, self.dimensions = path, dimensions
        self.tier = int(path.name.split("-", 1)[0])
        self.record = 8 + 4 * dimensions  # bytes of a key's record: low half, then vector
        self._fd = os.open(path, os.O_RDONLY)  # kept open: a merge may unlink the file meanwhile
        try:
            self.rows = _rows_in(os.pread(self._fd, HEADER, 0), os.fstat(self._fd).st_size, dimensions, path)
            self.filter = BloomFilter(self.rows)  # most keys a lookup asks are in another file
            self.index = KeyIndex.from_slices(self.rows, self._top_bits())
        except BaseException:
            os.close(self._fd)
            # Not closed again by __del__: the error (a store keeps a damaged file's) holds this
            # object, and by the time it goes the number may be another file's, open elsewhere.
            del self._fd
            raise

    def __del__(self):
        with contextlib.suppress(AttributeError, OSError):
            os.close(self._fd)

    def find(self, high: np.ndarray, low: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions among the keys given, their vectors) of the keys this segment holds. Where
        a key is here twice (stored again after a bad vector), the last, newest, is the one found."""
        maybe = np.flatnonzero(self.filter.maybe(high))
        query, rows = self.index.rows_of(high[maybe].astype(np.uint64, copy=False) >> np.uint64(64 - TOP))
        query = maybe[query]
        stored_low, vectors = split_records(self.read_records(rows))
        hit = np.flatnonzero(stored_low == low[query])
        asked = query[hit]
        newest = np.r_[asked[1:] != asked[:-1], True] if len(asked) else np.empty(0, bool)  # a key's last row
        return asked[newest], vectors[hit[newest]]

    def _top_bits(self) -> Iterator[np.ndarray]:
        """The top bits of the keys, a slice at a time, each key added to the filter on the way:
        neither the full keys nor all their top bits are in memory at once."""
        for first in range(0, self.rows, _KEYS_A_SLICE):
            keys = self.read_keys(first, min(first + _KEYS_A_SLICE, self.rows))
            self.filter.add(keys)
            yield (keys >> np.uint64(64 - TOP)).astype(np.uint32)

    def first_row_at_or_after(self, top: int) -> int:
        """The first row whose key's top bits are at least `top`."""
        return int(self.index.bound(np.array([top], np.uint32), after=False)[0])

    def read_keys(self, first: int, last: int) -> np.ndarray:
        """The high halves of rows `first` to `last`, from the file."""
        return self._read_at(HEADER + 8 * first, 8 * (last - first)).view(_U8)

    def read_records(self, rows: np.ndarray) -> np.ndarray:
        """The records (low half, vector: `record` bytes each) of `rows`, in that order. The file is
        read a window at a time where the asked records lie close together in it, and one `pread`
        a record elsewhere: never more than one window in memory, whatever the file's size."""
        size, start = self.record, HEADER + 8 * self.rows
        records = np.empty((len(rows), size), np.uint8)
        if not len(rows):
            return records
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        window = ordered * size // _WINDOW_BYTES
        cut = np.flatnonzero(np.diff(window)) + 1  # where the asked rows move on to the next window
        firsts, ends = np.r_[0, cut], np.r_[cut, len(ordered)]
        spans = ordered[ends - 1] - ordered[firsts] + 1
        dense = spans * size <= (ends - firsts) * _NEAR_BYTES
        buffer = np.empty(int(spans[dense].max(initial=0)) * size, np.uint8)  # at most a window
        for first, end, span in zip(firsts[dense].tolist(), ends[dense].tolist(), spans[dense].tolist()):
            top = int(ordered[first])
            self._read_into(buffer[: span * size], start + size * top)
            records[order[first:end]] = buffer[: span * size].reshape(span, size)[ordered[first:end] - top]
        sparse = order[np.repeat(~dense, ends - firsts)]  # the asked rows of windows not read whole
        data = b"".join([os.pread(self._fd, size, start + size * row) for row in rows[sparse].tolist()])
        if len(data) != size * len(sparse):
            raise OSError(f"{self.path.name}: shorter than its header says")
        records[sparse] = np.frombuffer(data, np.uint8).reshape(len(sparse), size)
        return records

    def read_rows(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows `first` to `last` as (high halves, records), each read in one pass into fresh memory."""
        records = self._read_at(HEADER + 8 * self.rows + self.record * first, self.record * (last - first))
        return self.read_keys(first, last), records.reshape(last - first, self.record)

    def _read_at(self, offset: int, size: int) -> np.ndarray:
        """`size` bytes of the file from `offset`, into a fresh array."""
        return self._read_into(np.empty(size, np.uint8), offset)

    def _read_into(self, data: np.ndarray, offset: int) -> np.ndarray:
        """`data` filled with the file's bytes from `offset`."""
        done = 0
        while done < len(data):  # one read returns at most about 2 GB
            got = os.preadv(self._fd, [data.data[done:]], offset + done)
            if not got:
                raise OSError(f"{self.path.name}: shorter than its header says")
            done += got
        return data


def split_records(records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(low halves, float32 vectors) of records: `records_of` undone."""
    return records[:, :8].copy().view(_U8).ravel(), records[:, 8:].copy().view(_F4)


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


def records_of(low: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """A record a key: its low half, then its vector as float32."""
    vectors = np.ascontiguousarray(vectors, dtype=_F4)
    records = np.empty((len(low), 8 + vectors.shape[1] * 4), np.uint8)
    records[:, :8] = np.ascontiguousarray(low, dtype=_U8).view(np.uint8).reshape(-1, 8)
    records[:, 8:] = vectors.view(np.uint8).reshape(len(low), -1)
    return records


def write_segment(directory: Path, tier: int, high: np.ndarray, low: np.ndarray, vectors: np.ndarray) -> Path:
    """A new segment of these keys and vectors in `directory`, sorted, written whole under a
    temporary name and then renamed into place; nothing is left behind where it fails."""
    order = np.argsort(high, kind="stable")
    with _new_file(directory, tier, time.time_ns()) as (file, _, path):
        _write_header(file, len(order), vectors.shape[1])
        file.write(np.ascontiguousarray(high[order], dtype=_U8).data.cast("B"))
        file.write(records_of(low[order], vectors[order]).data.cast("B"))
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


def stamp_of(name: str) -> int:
    """The time in a segment's name (a merged file's is its newest input's)."""
    return int(name.split("-", 2)[1])


def merge_segments(directory: Path, segments: list[Segment], stop: threading.Event) -> Path:
    """One segment of everything in `segments` (oldest first), one slice of the key space at a
    time so that memory stays bounded; `MergeStopped` once `stop` is set, leaving nothing."""
    rows, dimensions = sum(s.rows for s in segments), segments[0].dimensions
    slices = max(1, -(-rows * (DIGEST + 4 * dimensions) // MERGE_BYTES))
    bounds = sorted({(2**TOP * i) // slices for i in range(slices)})  # in top bits: where the index finds them
    done, stamp = 0, max(stamp_of(s.path.name) for s in segments)
    with _new_file(directory, max(s.tier for s in segments) + 1, stamp) as (file, fd, path):
        _write_header(file, rows, dimensions)
        file.flush()
        for i, start in enumerate(bounds):
            if stop.is_set():
                raise MergeStopped
            end = bounds[i + 1] if i + 1 < len(bounds) else None
            done += _merge_slice(fd, segments, start, end, rows, done)
        if done != rows:  # every input row once: the header's count must hold
            raise OSError(f"merged {done:,} rows of {rows:,}")
        os.fsync(fd)  # on disk before its inputs are deleted: a power cut must not lose them all
    return path


class MergeStopped(Exception):
    """A merge given up because its store is closing."""


def _merge_slice(fd: int, segments: list[Segment], start: int, end: int | None, rows: int, done: int) -> int:
    """Write the keys whose top bits are in [start, end) of every segment, sorted, at row `done`
    of a merged file of `rows` rows; the rows written."""
    parts = []
    for segment in segments:
        first = segment.first_row_at_or_after(start)
        last = segment.rows if end is None else segment.first_row_at_or_after(end)
        parts.append(segment.read_rows(first, last))
    high = np.concatenate([p[0] for p in parts])
    records = np.concatenate([p[1] for p in parts])
    del parts  # the slice is held twice at most: read, then sorted
    order = np.argsort(high, kind="stable")  # stable: of equal keys the newest segment's stays last
    _write_at(fd, high[order], HEADER + 8 * done)
    _write_at(fd, records[order], HEADER + 8 * rows + records.shape[1] * done)
    return len(order)


def _write_at(fd: int, column: np.ndarray, offset: int) -> None:
    """All of `column` at `offset`: a write the disk cut short (full) is carried on, so that it
    raises, rather than leaving a hole of zeros in a file that is then renamed into place."""
    if not column.size:  # a slice of the key space no key fell in
        return
    data = np.ascontiguousarray(column).data.cast("B")
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written
