import numpy as np
import pyarrow as pa
import pytest

from pipeline.arrow_strings import bool_values, from_numpy, int_values, large_strings
from pipeline.hashset import hash64


@pytest.mark.parametrize(
    "values",
    [
        [],
        [None],
        ["plain", "", None, "caf\u00e9", "e\u0301", "\U0001f600 emoji", "a\x00b"],
        [None] * 9 + ["after nine nulls"] * 9,  # a validity bitmap over more than one byte
    ],
)
def test_a_list_becomes_the_array_pa_array_makes_of_it(values):
    built = large_strings(values)
    assert built.equals(pa.array(values, type=pa.large_string()))
    assert built.to_pylist() == values


@pytest.mark.parametrize("values", [["a", 3], ["a", b"bytes"], [1.5]])
def test_a_value_neither_str_nor_none_is_refused(values):
    with pytest.raises(AttributeError):
        large_strings(values)


@pytest.mark.parametrize("values", [["id-1", "caf\u00e9", "", "id-1"], ["a", None, "a"]])
def test_texts_hash_alike_from_a_list_or_from_a_file_column(values):
    # ids and texts from a file come as Arrow string columns; a run's texts come as lists
    assert (hash64(values) == hash64(pa.array(values, type=pa.string()))).all()


@pytest.mark.parametrize(
    "array",
    [pa.array([3, -1, 7], pa.int32()), pa.array(range(10), pa.int64()).slice(3, 4), pa.array([1, 2], pa.uint16())],
    ids=["int32", "a slice of int64", "uint16"],
)
def test_int_values_are_what_numpy_would_read(array):
    assert int_values(array).tolist() == array.to_pylist()


@pytest.mark.parametrize("values", [[True, False, True], [False] * 9 + [True] * 5])
def test_bool_values_are_what_numpy_would_read_even_of_a_slice(values):
    array = pa.array(values)
    assert bool_values(array).tolist() == values and bool_values(array.slice(2)).tolist() == values[2:]


@pytest.mark.parametrize("array", [pa.array([1, None]), pa.array(["a"])], ids=["nulls", "not numbers"])
def test_int_values_refuse_nulls_and_other_types(array):
    with pytest.raises(TypeError):
        int_values(array)


@pytest.mark.parametrize(
    "values",
    [
        np.arange(5, dtype=np.float32) / 3,
        np.array([0.5, -2], dtype=np.float16),
        np.array([-128, 0, 127], dtype=np.int8),
        np.array([0, 255], dtype=np.uint8),
        np.arange(10, dtype=np.int64)[::3],  # not contiguous
        np.array([True] * 9 + [False, True]),  # a bitmap over more than one byte
        np.array([], dtype=np.float32),
    ],
    ids=["float32", "float16", "int8", "uint8", "a strided int64 view", "bools", "empty"],
)
def test_a_numpy_array_becomes_the_array_pa_array_makes_of_it(values):
    built = from_numpy(values)
    assert built.equals(pa.array(values)) and built.type == pa.array(values).type
