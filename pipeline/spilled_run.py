"""A sorted run of 64-bit hashes kept on disk, with what finds a member without reading it all:
a Bloom filter (`bloom.py`: 10 bits a member, about 2% false positives) and one fence key a block.

`HashSet` spills its oldest members here once it holds more than its bound in memory, so a set
of 10^8 hashes costs about 1.25 bytes a member in RAM instead of 8. A query reads only what its
filter lets through: a repeated value (a real member) or a false positive. When those are
dense, the run is read through in large slices; when sparse, block by block. Either way memory
stays bounded by a slice, not by the run.
"""

from __future__ import annotations

import os
import tempfile
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from pipeline.bloom import BloomFilter

_BLOCK = 512  # hashes a block (4 KiB): one fence key each
_SLICE_BLOCKS = 1024  # blocks a slice when the run is read through (4 MiB)
# Blocks of the largest run a merge reads at once, with the like span of the others: each piece is
# held twice (read, then joined) while the set's other threads allocate; at 4 MiB a piece, the
# merges of a 10M-row run's sets were its highs of RSS.
_MERGE_BLOCKS = 256
_FILTER_STEP = 1 << 16  # members hashed into the filter at once: their temporaries are 4 times their size
_DTYPE = np.dtype("<i8")
# A run is read through where a query needs more than a third of its blocks: a block read alone
# (a `pread`) cost 1.6 µs, a block read through 0.54 µs (7M members, 2,000 to 20,000 found).
_DENSE_SHARE = 3


class SpilledRun:
    """Sorted, distinct int64 hashes in a file of their own, removed when this object goes."""

    def __init__(self, members: np.ndarray, directory: Path):
        self._write([members], len(members), directory)

    @classmethod
    def merged(cls, runs: list[SpilledRun], directory: Path) -> SpilledRun:
        """The members of `runs` (disjoint) as one run, read and merged a slice at a time: memory
        holds about a slice of each, never a whole run. The runs' files are removed."""
        merged = cls.__new__(cls)
        merged._write(_merged_slices(runs), sum(len(run) for run in runs), directory)
        for run in runs:
            run.close()
        return merged

    def _write(self, slices: Iterable[np.ndarray], count: int, directory: Path) -> None:
        """Write `count` members arriving as ascending sorted `slices`; keep its fences and filter."""
        self.count = count
        handle, name = tempfile.mkstemp(prefix="hashes-", suffix=".i8", dir=directory)
        self.path = Path(name)
        self.filter = BloomFilter(count)
        fences, written = [], 0
        with os.fdopen(handle, "wb") as file:
            for members in slices:
                file.write(np.ascontiguousarray(members, dtype=_DTYPE).data)  # no copy to bytes
                # a copy: a strided view would keep the whole slice alive until the run is written
                fences.append(members[-written % _BLOCK :: _BLOCK].copy())
                for start in range(0, len(members), _FILTER_STEP):  # bounded temporaries while building
                    self.filter.add(members[start : start + _FILTER_STEP])
                written += len(members)
        self._fd = os.open(self.path, os.O_RDONLY)
        self._closer = weakref.finalize(self, _remove, self._fd, self.path)
        self.fences = np.ascontiguousarray(np.concatenate(fences) if fences else np.zeros(0, dtype=_DTYPE))

    def __len__(self) -> int:
        return self.count

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """For each key, whether this run holds it."""
        found = np.zeros(len(keys), dtype=bool)
        maybe = np.flatnonzero(self.filter.maybe(keys))
        if not len(maybe):
            return found
        order = maybe[np.argsort(keys[maybe], kind="stable")]
        blocks = np.maximum(np.searchsorted(self.fences, keys[order], side="right") - 1, 0)  # below the first: block 0
        if len(np.unique(blocks)) * _DENSE_SHARE > len(self.fences):  # dense: read it all, a slice at a time
            found[order] = self._contains_by_slices(keys[order], blocks)
        else:
            found[order] = self._contains_by_blocks(keys[order], blocks)
        return found

    def members(self) -> np.ndarray:
        """Every hash of the run, read back into memory."""
        return np.fromfile(self.path, dtype=_DTYPE)

    def close(self) -> None:
        """Remove the file now rather than when the run is collected."""
        self._closer()

    def _contains_by_blocks(self, keys: np.ndarray, blocks: np.ndarray) -> np.ndarray:
        """For sorted `keys` in `blocks`, whether the run holds each: the blocks are read a `pread`
        each and joined in order, which keeps them sorted, so that one search finds every key."""
        size = _BLOCK * _DTYPE.itemsize
        data = b"".join([os.pread(self._fd, size, block * size) for block in np.unique(blocks).tolist()])
        return _holds(np.frombuffer(data, dtype=_DTYPE), keys)

    def _contains_by_slices(self, keys: np.ndarray, blocks: np.ndarray) -> np.ndarray:
        found = np.zeros(len(keys), dtype=bool)
        for first_block in range(0, len(self.fences), _SLICE_BLOCKS):
            lo, hi = np.searchsorted(blocks, [first_block, first_block + _SLICE_BLOCKS])
            if hi > lo:
                found[lo:hi] = _holds(self._read(first_block * _BLOCK, _SLICE_BLOCKS * _BLOCK), keys[lo:hi])
        return found

    def below(self, values: np.ndarray) -> np.ndarray:
        """For each of the sorted `values`, how many members are smaller: a block read each."""
        blocks = np.searchsorted(self.fences, values, side="right") - 1
        return np.array(
            [
                0 if b < 0 else b * _BLOCK + int(np.searchsorted(self._read(b * _BLOCK, _BLOCK), v))
                for b, v in zip(blocks.tolist(), values.tolist())
            ],
            dtype=np.int64,
        )

    def _read(self, first: int, count: int) -> np.ndarray:
        count = min(count, self.count - first)
        return np.frombuffer(os.pread(self._fd, count * _DTYPE.itemsize, first * _DTYPE.itemsize), dtype=_DTYPE)


def _merged_slices(runs: list[SpilledRun]) -> Iterator[np.ndarray]:
    """The members of disjoint `runs` in order, a piece at a time: cut at every `_MERGE_BLOCKS`
    fences of the largest run, each run read from where it passes the cut."""
    largest = max(runs, key=len)
    cuts = largest.fences[_MERGE_BLOCKS::_MERGE_BLOCKS]
    bounds = [np.r_[0, run.below(cuts), len(run)] for run in runs]
    for piece in range(len(cuts) + 1):
        members = np.concatenate(
            [run._read(int(b[piece]), int(b[piece + 1] - b[piece])) for run, b in zip(runs, bounds)]
        )
        members.sort(kind="stable")  # sorted parts: a merge, in place
        if len(members):
            yield members


def _holds(members: np.ndarray, keys: np.ndarray) -> np.ndarray:
    at = np.minimum(np.searchsorted(members, keys), len(members) - 1)
    return members[at] == keys


def _remove(fd: int, path: Path) -> None:
    os.close(fd)
    path.unlink(missing_ok=True)
