"""Each vector encoding, on small arrays: the type it stores, what survives a round trip, how it is searched."""

import numpy as np
import pyarrow as pa
import pytest

from pipeline.config import OutputConfig
from pipeline.sinks.compact import VectorLayout, recall_at_k
from pipeline.sinks.vector_dtypes import encoded_array, encoding
from tests.pipeline.downstream.test_similarity import clustered_vectors


@pytest.mark.parametrize("dtype, value_type, width, bytes_per_row, min_cosine", [
    ("float32", pa.float32(), 64, 256, 0.99999),
    ("float16", pa.float16(), 64, 128, 0.9999),
    ("int8", pa.int8(), 64, 64, 0.999),
    ("binary", pa.uint8(), 8, 8, 0.7),  # signs only: a rough direction
])
def test_each_dtype_stores_a_fixed_size_list_and_decodes_to_unit_vectors_near_the_original(dtype, value_type, width, bytes_per_row, min_cosine):
    vectors = clustered_vectors(500, dims=64)
    enc = encoding(dtype)
    params = enc.calibrate(vectors)
    codes = enc.encode(vectors, params)
    column = encoded_array(codes, None, enc)
    assert column.type == pa.list_(value_type, width) and column.type == enc.arrow_type(64)
    assert codes.nbytes == bytes_per_row * 500
    decoded = enc.decode(codes, params)
    assert np.allclose(np.linalg.norm(decoded, axis=1), 1, atol=1e-5)
    assert np.min(np.sum(decoded * vectors, axis=1)) >= min_cosine


@pytest.mark.parametrize("dtype, truncate, least", [("float16", None, 0.99), ("int8", None, 0.95)])
def test_compact_dtypes_keep_the_float32_neighbours(dtype, truncate, least):
    vectors = clustered_vectors(3_000, dims=128)
    layout = VectorLayout("embedding", dtype, truncate)
    params = layout.encoding.calibrate(layout.cut(vectors))
    assert recall_at_k(vectors[:200], vectors[200:], layout, params) >= least


def test_binary_search_ranks_rows_by_hamming_distance():
    rng = np.random.default_rng(1)
    rows, queries = rng.normal(size=(300, 20)).astype(np.float32), rng.normal(size=(5, 20)).astype(np.float32)
    binary = encoding("binary")
    params = binary.calibrate(rows)
    indices, scores = binary.search_codes(queries, binary.encode(rows, params), params, k=7)
    distances = ((queries[:, None, :] > 0) != (rows[None, :, :] > 0)).sum(axis=2)
    assert np.array_equal(np.sort(distances, axis=1)[:, :7], np.take_along_axis(distances, indices, axis=1))
    assert np.allclose(scores, 1 - 2 * np.sort(distances, axis=1)[:, :7] / 20)


def test_an_unknown_dtype_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="use one of float32, float16, int8, binary"):
        OutputConfig(vector_dtype="int4")
