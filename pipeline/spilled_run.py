"""A sorted run of 64-bit hashes kept on disk, with what finds a member without reading it all:
a Bloom filter (one byte a member, about 2% false positives) and one fence key a block.

`HashSet` spills its oldest members here once it holds more than its bound in memory, so a set
of 10^8 hashes costs about 1 byte a member in RAM instead of 8. A query reads only what its
filter lets through: a repeated value (a real member) or a false positive. When those are
dense, the run is read through in large slices; when sparse, block by block. Either way memory
stays bounded by a slice, not by the run.
"""

from __future__ import annotations

import os
import tempfile
import weakref
from pathlib import Path

import numpy as np

_BLOCK = 512  # hashes a block (4 KiB): one fence key each
_SLICE_BLOCKS = 1024  # blocks a slice when the run is read through (4 MiB)
_FILTER_BITS = 8  # a member; with _PROBES probes, about 2% false positives
_PROBES = 6
_DTYPE = np.dtype("<i8")


class SpilledRun:
    """Sorted, distinct int64 hashes in a file of their own, removed when this object goes."""

    def __init__(self, members: np.ndarray, directory: Path):
        self.count = len(members)
        handle, name = tempfile.mkstemp(prefix="hashes-", suffix=".i8", dir=directory)
        self.path = Path(name)
        with os.fdopen(handle, "wb") as file:
            file.write(members.astype(_DTYPE, copy=False).tobytes())
        self._fd = os.open(self.path, os.O_RDONLY)
        self._closer = weakref.finalize(self, _remove, self._fd, self.path)
        self.fences = np.ascontiguousarray(members[::_BLOCK])
        self.filter = np.zeros(max(8, self.count * _FILTER_BITS) // 8, dtype=np.uint8)
        for start in range(0, self.count, 1 << 18):  # bounded temporaries while building
            positions = self._positions(members[start : start + (1 << 18)])
            np.bitwise_or.at(self.filter, positions >> 3, (1 << (positions & 7)).astype(np.uint8))

    def __len__(self) -> int:
        return self.count

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """For each key, whether this run holds it."""
        found = np.zeros(len(keys), dtype=bool)
        maybe = np.flatnonzero(self._maybe(keys))
        if not len(maybe):
            return found
        order = maybe[np.argsort(keys[maybe], kind="stable")]
        blocks = np.maximum(np.searchsorted(self.fences, keys[order], side="right") - 1, 0)  # below the first: block 0
        if len(np.unique(blocks)) * 8 > len(self.fences):  # dense: read it all, a slice at a time
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

    def _maybe(self, keys: np.ndarray) -> np.ndarray:
        maybe = np.ones(len(keys), dtype=bool)
        positions = self._positions(keys)
        for probe in range(_PROBES):
            at = positions[:, probe]
            maybe &= ((self.filter[at >> 3] >> (at & 7).astype(np.uint8)) & 1).astype(bool)
        return maybe

    def _positions(self, keys: np.ndarray) -> np.ndarray:
        """Each key's `_PROBES` bit positions: double hashing of the key's two halves (the keys
        are hashes already, their bits well mixed)."""
        unsigned = keys.astype(np.int64, copy=False).view(np.uint64)
        low, high = unsigned & np.uint64(0xFFFFFFFF), (unsigned >> np.uint64(32)) | np.uint64(1)
        steps = np.arange(_PROBES, dtype=np.uint64)
        return ((low[:, None] + steps * high[:, None]) % np.uint64(len(self.filter) * 8)).astype(np.int64)

    def _contains_by_blocks(self, keys: np.ndarray, blocks: np.ndarray) -> np.ndarray:
        found = np.zeros(len(keys), dtype=bool)
        starts = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1]])
        for first, end in zip(starts, np.r_[starts[1:], len(keys)]):
            block = self._read(int(blocks[first]) * _BLOCK, _BLOCK)
            found[first:end] = _holds(block, keys[first:end])
        return found

    def _contains_by_slices(self, keys: np.ndarray, blocks: np.ndarray) -> np.ndarray:
        found = np.zeros(len(keys), dtype=bool)
        for first_block in range(0, len(self.fences), _SLICE_BLOCKS):
            lo, hi = np.searchsorted(blocks, [first_block, first_block + _SLICE_BLOCKS])
            if hi > lo:
                found[lo:hi] = _holds(self._read(first_block * _BLOCK, _SLICE_BLOCKS * _BLOCK), keys[lo:hi])
        return found

    def _read(self, first: int, count: int) -> np.ndarray:
        count = min(count, self.count - first)
        return np.frombuffer(os.pread(self._fd, count * _DTYPE.itemsize, first * _DTYPE.itemsize), dtype=_DTYPE)


def _holds(members: np.ndarray, keys: np.ndarray) -> np.ndarray:
    at = np.minimum(np.searchsorted(members, keys), len(members) - 1)
    return members[at] == keys


def _remove(fd: int, path: Path) -> None:
    os.close(fd)
    path.unlink(missing_ok=True)
