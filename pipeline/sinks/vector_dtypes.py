"""How a vector column is stored: one encoding per `output.vector_dtype`, found by name.

Each encoding says its Arrow value type and width, turns unit float32 vectors into that type
(`encode`) and back (`decode`, unit length again), and keeps whatever it needs to decode (int8's
per-dimension scale) as a small dict that the writer puts in each file's Parquet metadata
under `VECTORS_KEY`, by column. Rows are found by a dot product over decoded vectors, except
binary's, which are compared by Hamming distance over their packed bits (`search_codes`).
"""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pyarrow as pa

from pipeline.arrow_strings import from_numpy
from pipeline.errors import ConfigError
from pipeline.unit_vectors import l2_normalise

VECTORS_KEY = b"embedpipe_vectors"  # Parquet key-value metadata: {column: {dtype, dimensions, ...}}


class VectorEncoding:
    """float32, as the model made them: the identity, and the base the others build on."""

    name: ClassVar[str] = "float32"
    value_type: ClassVar[pa.DataType] = pa.float32()
    numpy_type: ClassVar[type] = np.float32
    # Parquet has no 8-bit type: int8 and uint8 are stored as 32-bit integers, 2 bytes a value
    # after compression; dictionary-encoded (at most 256 values) they take 1.
    dictionary: ClassVar[bool] = False

    def width(self, dimensions: int) -> int:
        """Values stored per vector."""
        return dimensions

    def arrow_type(self, dimensions: int) -> pa.DataType:
        """The column's type: a fixed_size_list of `value_type`."""
        return pa.list_(self.value_type, self.width(dimensions))

    def calibrate(self, matrix: np.ndarray, params: dict | None = None) -> dict:
        """What decoding needs, updated with more of the run's vectors (`params` from earlier ones)."""
        return {}

    def encode(self, matrix: np.ndarray, params: dict) -> np.ndarray:
        """Stored values, rows × `width`, of unit float32 rows."""
        return matrix.astype(self.numpy_type, copy=False)

    def decode(self, codes: np.ndarray, params: dict) -> np.ndarray:
        """Unit float32 rows from stored values."""
        return np.asarray(codes, dtype=np.float32)

    def search_codes(self, queries: np.ndarray, codes: np.ndarray, params: dict, k: int) -> tuple:
        """The `k` rows nearest each float32 query, best first: (indices, scores)."""
        from pipeline.downstream.similarity import exact_top_k

        return exact_top_k(np.ascontiguousarray(queries, dtype=np.float32), self.decode(codes, params), k)


class Float16(VectorEncoding):
    """Half precision: half the bytes, about three decimal digits per value."""

    name = "float16"
    value_type = pa.float16()
    numpy_type = np.float16

    def decode(self, codes: np.ndarray, params: dict) -> np.ndarray:
        return l2_normalise(np.asarray(codes, dtype=np.float32))


class Int8(VectorEncoding):
    """One signed byte a value, scaled per dimension by the largest magnitude the run wrote."""

    name = "int8"
    value_type = pa.int8()
    numpy_type = np.int8
    dictionary = True

    def calibrate(self, matrix: np.ndarray, params: dict | None = None) -> dict:
        peak = np.abs(matrix).max(axis=0) if len(matrix) else np.zeros(matrix.shape[1], np.float32)
        if params:
            peak = np.maximum(peak, np.asarray(params["scale"], dtype=np.float32) * 127)
        return {"scale": [float(s) for s in np.maximum(peak, 1e-12) / 127]}

    def encode(self, matrix: np.ndarray, params: dict) -> np.ndarray:
        scaled = matrix / np.asarray(params["scale"], dtype=np.float32)
        np.rint(scaled, out=scaled)
        return np.clip(scaled, -127, 127, out=scaled).astype(np.int8)

    def decode(self, codes: np.ndarray, params: dict) -> np.ndarray:
        return l2_normalise(np.asarray(codes, dtype=np.float32) * np.asarray(params["scale"], dtype=np.float32))


class Binary(VectorEncoding):
    """One bit a dimension, its sign, packed eight to a byte; searched by Hamming distance."""

    name = "binary"
    value_type = pa.uint8()
    numpy_type = np.uint8
    dictionary = True

    def width(self, dimensions: int) -> int:
        return -(-dimensions // 8)

    def calibrate(self, matrix: np.ndarray, params: dict | None = None) -> dict:
        return {"bits": int(matrix.shape[1])}

    def encode(self, matrix: np.ndarray, params: dict) -> np.ndarray:
        return np.packbits(matrix > 0, axis=1)

    def decode(self, codes: np.ndarray, params: dict) -> np.ndarray:
        bits = np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=1)[:, : params["bits"]]
        return l2_normalise(bits.astype(np.float32) * 2 - 1)

    def search_codes(self, queries: np.ndarray, codes: np.ndarray, params: dict, k: int) -> tuple:
        """Hamming distance between the queries' sign bits and the rows'; score 1 − 2·distance/bits."""
        packed, codes = self.encode(queries, params), np.asarray(codes, dtype=np.uint8)
        k = min(k, len(codes))
        indices = np.empty((len(packed), k), dtype=np.int64)
        distances = np.empty((len(packed), k), dtype=np.int64)
        for row, query in enumerate(packed):
            distance = np.bitwise_count(codes ^ query).sum(axis=1, dtype=np.int64)
            top = np.argpartition(distance, k - 1)[:k] if k < len(codes) else np.arange(len(codes))
            top = top[np.argsort(distance[top], kind="stable")]
            indices[row], distances[row] = top, distance[top]
        return indices, (1 - 2 * distances / params["bits"]).astype(np.float32)


ENCODINGS: dict[str, VectorEncoding] = {e.name: e for e in (VectorEncoding(), Float16(), Int8(), Binary())}


def encoding(name: str) -> VectorEncoding:
    """The encoding called `name`; a ConfigError naming the others for any other."""
    try:
        return ENCODINGS[name]
    except KeyError:
        raise ConfigError(f"output.vector_dtype {name!r}: use one of {', '.join(ENCODINGS)}") from None


def encoded_array(codes: np.ndarray, present: np.ndarray | None, enc: VectorEncoding) -> pa.FixedSizeListArray:
    """`fixed_size_list<value_type>[width]` of stored values; null where `present` is False."""
    mask = None if present is None else from_numpy(~present)
    flat = from_numpy(np.ascontiguousarray(codes, dtype=enc.numpy_type).ravel())  # of `value_type`
    return pa.FixedSizeListArray.from_arrays(flat, codes.shape[1], mask=mask)


def column_codes(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed_size_list column without nulls as a rows × width array of its stored values."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    width = array.type.list_size
    return array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), width)


def filled_codes(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """`column_codes` of a column that may hold nulls: a null row reads as zeros."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count:  # filling copies the whole column
        array = array.fill_null(pa.scalar([0] * array.type.list_size, type=array.type))
    return column_codes(array)


def file_encodings(metadata: dict[bytes, bytes] | None) -> dict[str, dict]:
    """A file's vector columns as its metadata records them: {column: {dtype, dimensions, ...}};
    empty for a file written before compact vectors (every column float32)."""
    raw = (metadata or {}).get(VECTORS_KEY)
    return json.loads(raw) if raw else {}


def as_float_lists(table: pa.Table, recorded: dict[str, dict]) -> pa.Table:
    """`table` with every vector column as list<float>, decoded as `recorded` (the file's
    `file_encodings`) says, nulls kept: for tables that have no fixed-size list (Iceberg, Delta)."""
    for index, field in enumerate(table.schema):
        if pa.types.is_fixed_size_list(field.type):
            vectors = table[field.name].combine_chunks()
            stored = recorded.get(field.name, {"dtype": "float32"})
            decoded = encoding(stored["dtype"]).decode(filled_codes(vectors), stored).astype(np.float32, copy=False)
            offsets = pa.array(np.arange(0, decoded.size + 1, decoded.shape[1], dtype=np.int32))
            floats = pa.ListArray.from_arrays(offsets, pa.array(decoded.ravel()), mask=vectors.is_null())
            table = table.set_column(index, pa.field(field.name, pa.list_(pa.float32())), floats)
    return table.replace_schema_metadata(None)
