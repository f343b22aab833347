"""The Bloom filter: every key added is found; few keys never added are taken for members."""

import numpy as np
import pytest

from pipeline.bloom import BloomFilter


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
@pytest.mark.parametrize("members", [1, 1_000, 200_000])
def test_every_key_added_is_maybe_a_member_and_few_others_are(dtype, members):
    rng = np.random.default_rng(members)
    keys = rng.integers(0, 2**64 - 1, size=2 * members + 20_000, dtype=np.uint64).view(dtype)  # hashes: every bit mixed
    added, others = keys[:members], keys[members:]
    bloom = BloomFilter(members)
    bloom.add(added)
    assert bloom.maybe(added).all()
    false_positives = bloom.maybe(others).mean()
    assert false_positives < (0.03 if members >= 1_000 else 0.05), false_positives  # 1.8% at 10 bits a member


def test_keys_that_differ_only_in_one_probe_field_are_told_apart():
    base = np.random.default_rng(5).integers(0, 2**64 - 1, size=1, dtype=np.uint64)
    fields = np.arange(64, dtype=np.uint64)
    for shift in range(0, 30, 6):  # each of the five six-bit fields that choose a key's bits
        keys = (base & ~np.uint64(63 << shift)) | (fields << np.uint64(shift))
        bloom = BloomFilter(64 * 1_000)
        bloom.add(keys[:1])
        # The same word, and another bit but where the new value is one of the other four fields'.
        maybe = bloom.maybe(keys)
        assert maybe[0] and maybe.sum() <= 5, shift
