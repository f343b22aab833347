"""A segment's in-memory index finds the same rows a binary search over every key would."""

import numpy as np
import pytest

from pipeline.cache.segment_index import KeyIndex


@pytest.mark.parametrize("rows", [0, 1, 7, 8, 1_000, 100_000, 300_000])  # 300,000: 2 bytes a key
@pytest.mark.parametrize("shared", [False, True])  # stored keys sharing their top bits
@pytest.mark.parametrize("slice_rows", [None, 7, 4_096])  # whole, or read from a file a slice at a time
def test_the_index_finds_each_key_where_a_binary_search_does(rows, shared, slice_rows):
    rng = np.random.default_rng(rows)
    top = np.sort(rng.integers(0, 2**32, size=rows, dtype=np.uint64).astype(np.uint32))
    if shared and rows > 1:
        top[1::3] = top[::3][: len(top[1::3])]
        top.sort()
    if slice_rows is None:
        index = KeyIndex(top)
    else:  # buckets, and keys sharing their top bits, cut across slices
        index = KeyIndex.from_slices(rows, (top[first : first + slice_rows] for first in range(0, rows, slice_rows)))
    asked = np.concatenate([top[rng.permutation(rows)[:500]], rng.integers(0, 2**32, 500, dtype=np.uint64)])
    # the bits below a stored key's bucket, in the buckets beside it: found only where the key is
    bucket = 1 << (32 - index.bits)
    beside = [(top.astype(np.int64) + step * bucket) % 2**32 for step in (-1, 1)] if index.bits else []
    ends = np.array([0, 2**32 - 1], np.uint32)
    asked = np.concatenate([asked.astype(np.uint32), *[b.astype(np.uint32) for b in beside], ends])
    for after, side in ((True, "right"), (False, "left")):
        np.testing.assert_array_equal(index.bound(asked, after), np.searchsorted(top, asked, side=side))
    query, found = index.rows_of(asked)
    assert index.nbytes <= (2 if rows >= 2**18 else 4) * rows + 4 * (len(index.starts))
    lows, highs = np.searchsorted(top, asked, side="left"), np.searchsorted(top, asked, side="right")
    expected = [(q, r) for q, (low, high) in enumerate(zip(lows.tolist(), highs.tolist())) for r in range(low, high)]
    assert list(zip(query.tolist(), found.tolist())) == expected
