"""The output loads as vectors where users keep their data."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.run.steps import run_pipeline
from tests.conftest import openai_config, write_parquet

TEXTS = ["refund my order", "my order never came", "reset my password"]


@pytest.fixture
def output(tmp_path, fake_openai):
    source = write_parquet(tmp_path / "in.parquet", {"id": [1, 2, 3], "text": TEXTS})
    run_pipeline(openai_config(tmp_path, fake_openai, source, output__delta_path=str(tmp_path / "delta")))
    return tmp_path / "out"


def expected(output) -> np.ndarray:
    return np.stack(pq.read_table(output).column("embedding").to_numpy(zero_copy_only=False))


def test_duckdb_reads_float_arrays_and_ranks_by_cosine_similarity(output):
    import duckdb

    rows = duckdb.sql(f"""
        SELECT id, array_cosine_similarity(embedding::FLOAT[16], (SELECT embedding::FLOAT[16] FROM '{output}/*.parquet' WHERE id = 1)) AS score
        FROM '{output}/*.parquet' ORDER BY score DESC
    """).fetchall()
    assert rows[0][0] == 1 and rows[0][1] == pytest.approx(1.0, abs=1e-5)
    assert duckdb.sql(f"SELECT typeof(embedding) FROM '{output}/*.parquet' LIMIT 1").fetchall()[0][0] == "FLOAT[]"  # a list until the cast to FLOAT[16]


def test_polars_reads_an_array_column(output):
    import polars as pl

    frame = pl.read_parquet(output / "*.parquet")
    assert frame.schema["embedding"] == pl.Array(pl.Float32, 16)
    assert np.allclose(frame["embedding"].to_numpy(), expected(output))


def test_pandas_reads_one_array_per_row(output):
    import pandas as pd

    frame = pd.read_parquet(output)
    assert list(frame["id"]) == [1, 2, 3] and np.allclose(np.stack(frame["embedding"]), expected(output))


def test_lancedb_indexes_the_table_and_finds_a_row_by_its_vector(output, tmp_path):
    import lancedb

    table = lancedb.connect(tmp_path / "lance").create_table("docs", pq.read_table(output))
    hit = table.search(expected(output)[2]).metric("cosine").limit(1).to_list()[0]
    assert hit["id"] == 3


def test_a_delta_lake_table_holds_the_same_rows(output, tmp_path):
    from deltalake import DeltaTable

    table = DeltaTable(tmp_path / "delta").to_pyarrow_table().sort_by("id")
    assert table.column("id").to_pylist() == [1, 2, 3] and table.schema.field("embedding").type == pa.list_(pa.float32())
    assert np.allclose(np.stack(table.column("embedding").to_numpy(zero_copy_only=False)), expected(output))


@pytest.mark.parametrize("dtype", ["float16", "int8", "binary"])
def test_a_compact_output_reaches_delta_lake_as_decoded_floats(tmp_path, fake_openai, dtype):
    from deltalake import DeltaTable

    source = write_parquet(tmp_path / "in.parquet", {"id": [1, 2, 3], "text": TEXTS})
    run_pipeline(openai_config(tmp_path, fake_openai, source, output__vector_dtype=dtype, output__delta_path=str(tmp_path / "delta")))
    table = DeltaTable(tmp_path / "delta").to_pyarrow_table().sort_by("id")
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert table.schema.field("embedding").type == pa.list_(pa.float32()) and vectors.shape == (3, 16)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
