"""Arrow strings from a Python list, built from their buffers: `pa.array` of a list asks its
pandas shim whether the list is a pandas object first, and that imports pandas (0.2 s in a
fresh process, on a run's way to its first request)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa


def large_strings(values: Sequence[str | None]) -> pa.LargeStringArray:
    """`values` as Arrow large strings, None as null: what `pa.array(values, pa.large_string())`
    makes of them, without importing pandas. AttributeError where a value is neither str nor None."""
    encoded = [b"" if value is None else value.encode() for value in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
    nulls = values.count(None)
    validity = None
    if nulls:
        present = np.fromiter((value is not None for value in values), dtype=bool, count=len(values))
        validity = pa.py_buffer(np.packbits(present, bitorder="little"))
    data = pa.py_buffer(b"".join(encoded))
    return pa.LargeStringArray.from_buffers(len(encoded), pa.py_buffer(offsets), data, validity, nulls)
