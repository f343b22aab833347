"""output.iceberg: the output committed to an Iceberg table (SQLite catalog), read back with pyiceberg and DuckDB.

DuckDB reads the table two ways: the data files of its current snapshot as pyiceberg plans them
(`read_parquet`), and the table itself with DuckDB's own iceberg extension (`iceberg_scan` on the
metadata file), loaded from the duckdb-extension-iceberg wheel's files, never downloaded.
"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import IcebergConfig
from pipeline.run.report import summary_lines
from pipeline.run.steps import run_pipeline
from pipeline.sinks.iceberg import PART_COLUMN, _without_password, open_catalog
from tests.conftest import openai_config, write_parquet

pytest.importorskip("pyiceberg")


def write_inputs(folder, texts_by_file):
    for name, texts in texts_by_file.items():
        write_parquet(folder / f"{name}.parquet", {"id": [f"{name}{i}" for i in range(len(texts))], "text": texts})


@pytest.fixture
def iceberg(tmp_path):
    return IcebergConfig(catalog_uri=f"sqlite:///{tmp_path}/catalog/catalog.db", warehouse=str(tmp_path / "warehouse"), table="docs.vectors")


def run(tmp_path, server, iceberg, **overrides):
    config = openai_config(tmp_path, server, tmp_path / "in", output__iceberg=iceberg.model_dump(), **overrides)
    config.source.path = str(tmp_path / "in" / "*.parquet")
    return run_pipeline(config)


@pytest.mark.parametrize("uri", ["postgresql://me:hunter2@db/x", "https://me:hunter2@catalog.example/api"])
def test_a_driver_quoting_the_catalog_uri_never_shows_its_password(uri):
    assert _without_password(f"could not connect to {uri}", uri) == f"could not connect to {uri.replace('hunter2', '***')}"


def current(iceberg):
    table = open_catalog(iceberg).load_table(iceberg.table)
    return table, table.scan().to_arrow().sort_by("id")


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_the_table_holds_every_row_once_with_list_float_vectors_and_their_dimension(tmp_path, fake_openai, iceberg, dtype):
    write_inputs(tmp_path / "in", {"a": ["alpha", "beta", None], "b": ["gamma", "delta"]})
    manifest = run(tmp_path, fake_openai, iceberg, output__vector_dtype=dtype)
    table, rows = current(iceberg)
    assert rows.column("id").to_pylist() == ["a0", "a1", "a2", "b0", "b1"]
    assert rows.schema.field("embedding").type in (pa.list_(pa.float32()), pa.large_list(pa.float32()))
    assert (table.properties["embedpipe.vector.embedding.dimensions"], table.properties["embedpipe.vector.embedding.dtype"]) == ("16", dtype)
    output = pq.read_table(tmp_path / "out").sort_by("id")
    from pipeline.downstream.similarity import read_output

    decoded = read_output(tmp_path / "out").vectors  # what the output's readers get
    vectors = np.stack([v for v in rows.column("embedding").to_pylist() if v is not None])
    np.testing.assert_allclose(vectors, decoded, atol=1e-6)
    assert rows.column("embedding")[2].as_py() is None and output.num_rows == 5
    assert manifest["iceberg"] == {"table": "docs.vectors", "rewritten_parts": 2, "removed_parts": 0}
    assert "  iceberg        docs.vectors: one commit; partitions written 2, removed 0" in summary_lines(manifest)


def test_a_rerun_adds_no_row_and_an_incremental_run_rewrites_only_the_changed_partition(tmp_path, fake_openai, iceberg):
    import duckdb

    write_inputs(tmp_path / "in", {"a": ["alpha", "beta"], "b": ["gamma", "delta"], "c": ["eps"]})
    run(tmp_path, fake_openai, iceberg)
    table, _ = current(iceberg)
    files_before = {f.file.file_path for f in table.scan().plan_files()}
    commits = len(table.metadata.metadata_log)
    assert run(tmp_path, fake_openai, iceberg)["iceberg"]["rewritten_parts"] == 0
    assert len(current(iceberg)[0].metadata.metadata_log) == commits + 1  # each run one commit: seen whole or not at all
    write_inputs(tmp_path / "in", {"b": ["gamma", "a new delta", "zeta"]})
    (tmp_path / "in" / "c.parquet").unlink()
    assert run(tmp_path, fake_openai, iceberg)["iceberg"] == {"table": "docs.vectors", "rewritten_parts": 1, "removed_parts": 1}
    table, rows = current(iceberg)
    assert rows.column("id").to_pylist() == ["a0", "a1", "b0", "b1", "b2"]
    files = [f.file.file_path for f in table.scan().plan_files()]
    kept = [f for f in files if f in files_before]
    assert len(kept) == 1 and f"{PART_COLUMN}=part-00000" in kept[0]  # file a's partition was not rewritten
    paths = [f.removeprefix("file://") for f in files]
    read = duckdb.sql(f"SELECT id, text, len(embedding) AS d FROM read_parquet({paths!r}) ORDER BY id").fetchall()
    assert [r[0] for r in read] == ["a0", "a1", "b0", "b1", "b2"] and {r[2] for r in read} == {16}


def duckdb_with_iceberg(tmp_path):
    """A DuckDB connection with the iceberg extension (and avro, which it needs) LOADed from the
    files of the duckdb-extension-* wheels the test extra pins; autoinstall and autoload off and an
    empty extension directory, so nothing can be fetched: a missing or mismatched wheel fails here."""
    from importlib.resources import files

    import duckdb

    off = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    con = duckdb.connect(config={**off, "extension_directory": str(tmp_path / "duckdb-extensions")})
    for name in ("avro", "iceberg"):
        path = files(f"duckdb_extension_{name}") / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
        con.execute(f"LOAD '{path}'")
    loaded = con.sql("SELECT extension_name FROM duckdb_extensions() WHERE loaded AND install_mode = 'NOT_INSTALLED'").fetchall()
    assert sorted(loaded) == [("avro",), ("iceberg",)]  # from the wheels' paths, nothing installed
    return con


def test_duckdb_s_iceberg_extension_reads_the_table_and_sees_an_incremental_run_whole(tmp_path, fake_openai, iceberg):
    from pipeline.downstream.similarity import read_output

    con = duckdb_with_iceberg(tmp_path)

    def scan(metadata):
        query = f"SELECT id, text, embedding FROM iceberg_scan('{metadata}') ORDER BY id"
        return con.sql(query).fetchall()

    def check(rows):  # DuckDB's rows are pyiceberg's, vectors those of the Parquet output
        table, expected = current(iceberg)
        assert [(r[0], r[1]) for r in rows] == list(zip(expected.column("id").to_pylist(), expected.column("text").to_pylist()))
        decoded = read_output(tmp_path / "out")
        by_id = dict(zip(decoded.ids.to_pylist(), decoded.vectors))
        assert [r[0] for r in rows if r[2] is not None] == sorted(by_id)
        for id_, _, vector in rows:
            if vector is not None:
                np.testing.assert_allclose(np.asarray(vector, dtype=np.float32), by_id[id_], atol=1e-6)
        return table.metadata_location

    write_inputs(tmp_path / "in", {"a": ["alpha", "beta", None], "b": ["gamma", "delta"], "c": ["eps"]})
    run(tmp_path, fake_openai, iceberg)
    first = check(scan(current(iceberg)[0].metadata_location))
    assert [r[0] for r in scan(first)] == ["a0", "a1", "a2", "b0", "b1", "c0"] and scan(first)[2][2] is None
    write_inputs(tmp_path / "in", {"b": ["gamma", "a new delta", "zeta"]})
    (tmp_path / "in" / "c.parquet").unlink()
    assert run(tmp_path, fake_openai, iceberg)["iceberg"]["rewritten_parts"] == 1
    second = current(iceberg)[0].metadata_location
    rows = scan(second)
    assert second != first and check(rows) == second
    assert len(rows) == 6 and len({r[0] for r in rows}) == 6  # the input's rows, each once: b's rows replaced, c's gone
    assert [r[1] for r in rows if r[0].startswith("b")] == ["gamma", "a new delta", "zeta"]
    assert [r[0] for r in scan(first)] == ["a0", "a1", "a2", "b0", "b1", "c0"]  # the earlier snapshot still reads as it was


def test_a_second_model_s_column_joins_the_table_beside_the_first(tmp_path, iceberg):
    from tests.fakes.openai_server import FakeOpenAI

    write_inputs(tmp_path / "in", {"a": ["alpha", "beta"]})
    with FakeOpenAI(models=("text-embedding-3-small", "text-embedding-3-large")) as server:
        run(tmp_path, server, iceberg)
        run(tmp_path, server, iceberg, embedding__model="text-embedding-3-large", output__vector_column="embedding_v2")
    table, rows = current(iceberg)
    assert [name for name in rows.column_names if name.startswith("embedding")] == ["embedding", "embedding_v2"]
    assert rows.num_rows == 2 and rows.column("embedding").null_count == rows.column("embedding_v2").null_count == 0
    assert table.properties["embedpipe.vector.embedding_v2.model"] == "text-embedding-3-large"
