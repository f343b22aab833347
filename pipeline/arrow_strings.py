"""Arrow strings from a Python list and Arrow arrays from numpy, built from their buffers, and
integers and bools read from theirs: `pa.array`, and `to_numpy`, ask pyarrow's pandas shim
first, and that imports pandas (0.2 s in a fresh process, on a run's way to its first request)."""

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


def from_numpy(values: np.ndarray) -> pa.Array:
    """A one-dimensional numpy array of numbers or bools as the Arrow array of its type, built
    from its buffer (see `large_strings`): what `pa.array(values)` makes of it."""
    values = np.ascontiguousarray(values)
    if values.dtype == np.bool_:
        bits = pa.py_buffer(np.packbits(values, bitorder="little"))
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, bits])
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def int_values(array: pa.Array) -> np.ndarray:
    """The values of an Arrow integer array without nulls, as numpy reads its buffer: `to_numpy`
    asks pyarrow's pandas shim first, and that imports pandas."""
    if array.null_count or not pa.types.is_integer(array.type):
        raise TypeError(f"int_values: an integer array without nulls, not {array.type} with {array.null_count} nulls")
    kind = "i" if pa.types.is_signed_integer(array.type) else "u"
    dtype = np.dtype(f"<{kind}{array.type.bit_width // 8}")
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)


def bool_values(array: pa.Array) -> np.ndarray:
    """The values of an Arrow boolean array without nulls as numpy bools (see `int_values`)."""
    if array.null_count or not pa.types.is_boolean(array.type):
        raise TypeError(f"bool_values: a boolean array without nulls, not {array.type} with {array.null_count} nulls")
    bits = np.unpackbits(np.frombuffer(array.buffers()[1], dtype=np.uint8), bitorder="little")
    return bits[array.offset : array.offset + len(array)].astype(bool)
