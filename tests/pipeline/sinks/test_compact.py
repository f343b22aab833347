"""Runs that write a compact vector column: what a user finds in the output, the manifest and the cache."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from pipeline.config import load_config
from pipeline.downstream.clustering import cluster_vectors
from pipeline.downstream.similarity import neighbours_table, read_output, search
from pipeline.errors import ConfigError
from pipeline.run.report import summary_lines
from pipeline.run.steps import run_pipeline
from pipeline.sinks.vector_dtypes import VECTORS_KEY
from tests.conftest import openai_config, write_parquet, write_run_yaml
from tests.fakes.openai_server import fake_vector

TEXTS = [f"support ticket number {i}" for i in range(60)] + [None]


@pytest.fixture
def source(tmp_path):
    return write_parquet(tmp_path / "in" / "docs.parquet", {"id": list(range(len(TEXTS))), "text": TEXTS})


def expected(texts, dimensions=16, keep=None):
    vectors = np.stack([fake_vector(t, dimensions) for t in texts])[:, :keep]
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize("dtype, value_type, width, min_cosine", [
    ("float16", pa.float16(), 16, 0.9999),
    ("int8", pa.int8(), 16, 0.999),
    ("binary", pa.uint8(), 2, 0.6),
])
def test_a_compact_run_stores_its_dtype_and_reads_back_near_float32(tmp_path, fake_openai, source, dtype, value_type, width, min_cosine):
    config = openai_config(tmp_path, fake_openai, source, output__vector_dtype=dtype)
    manifest = run_pipeline(config, api_key="sk-secret-not-in-metadata")
    table = pq.read_table(config.output.path)
    assert table.schema.field("embedding").type == pa.list_(value_type, width)
    assert table.column("id").to_pylist() == list(range(61)) and table.column("embedding")[60].as_py() is None
    record = manifest["vectors"]["embedding"]
    assert (record["dtype"], record["dimensions"], record["recall_sample_rows"]) == (dtype, 16, 60)
    assert 0 <= record["recall_at_10"] <= 1
    assert any(line.startswith("  vectors") and "recall@10" in line for line in summary_lines(manifest))
    embedded = read_output(config.output.path)
    assert np.min(np.sum(embedded.vectors * expected(TEXTS[:60]), axis=1)) >= min_cosine
    indices, _ = search(embedded, expected(["support ticket number 7"]), k=1)
    assert embedded.ids[int(indices[0][0])].as_py() == 7  # binary: Hamming distance 0
    assert b"sk-secret" not in b"".join(p.read_bytes() for p in (tmp_path / "out").iterdir() if p.is_file())


def test_int8_keeps_its_per_dimension_scale_in_each_file_and_the_cache_keeps_float32(tmp_path, fake_openai, source):
    run_pipeline(openai_config(tmp_path, fake_openai, source, output__vector_dtype="int8"))
    recorded = json.loads(pq.read_schema(tmp_path / "out" / "part-00000.parquet").metadata[VECTORS_KEY])
    assert recorded["embedding"]["dtype"] == "int8" and len(recorded["embedding"]["scale"]) == 16
    requests = fake_openai.requests
    plain = openai_config(tmp_path, fake_openai, source, output__path=str(tmp_path / "plain"))
    run_pipeline(plain)  # every vector from the cache, exactly as the server sent it
    assert fake_openai.requests == requests
    vectors = np.stack(pq.read_table(tmp_path / "plain").column("embedding").to_pylist()[:60])
    np.testing.assert_allclose(vectors, expected(TEXTS[:60]), atol=1e-6)


def test_a_cut_keeps_the_first_dimensions_re_normalised(tmp_path, fake_openai, source):
    config = openai_config(tmp_path, fake_openai, source, output__dimensions_truncate=8)
    manifest = run_pipeline(config)
    vectors = np.stack(pq.read_table(config.output.path).column("embedding").to_pylist()[:60])
    np.testing.assert_allclose(vectors, expected(TEXTS[:60], keep=8), atol=1e-6)
    assert (manifest["vectors"]["embedding"]["dimensions"], manifest["dimensions"]) == (8, 16)


def test_a_model_not_trained_to_be_cut_is_refused_in_one_line(tmp_path, fake_openai, source, capsys):
    config = openai_config(tmp_path, fake_openai, source, embedding__model="text-embedding-ada-002", output__dimensions_truncate=8)
    with pytest.raises(ConfigError, match="not a Matryoshka-trained model"):
        run_pipeline(config)
    path = write_run_yaml(tmp_path, fake_openai, ["a"], provider="local", model="all-MiniLM-L6-v2")
    assert main(["run", str(path), "--set", "output.dimensions_truncate=128"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "all-MiniLM-L6-v2 (provider local) is not a Matryoshka-trained model" in error


def test_an_incremental_compact_run_takes_unchanged_rows_from_the_cache_not_the_last_output(tmp_path, fake_openai, source):
    config = openai_config(tmp_path, fake_openai, source, output__vector_dtype="int8")
    run_pipeline(config)
    fake_openai.calls.clear()
    changed = ["a changed ticket", *TEXTS[1:]]
    write_parquet(source, {"id": list(range(len(changed))), "text": changed})
    stats = run_pipeline(config)["stats"]
    assert (list(fake_openai.calls), stats["reused_rows"], stats["cache_hits"]) == (["a changed ticket"], 0, 59)
    fresh = run_pipeline(openai_config(tmp_path, fake_openai, source, output__vector_dtype="int8", output__path=str(tmp_path / "fresh")))
    assert fresh["stats"]["requests"] == 0
    assert pq.read_table(config.output.path).equals(pq.read_table(tmp_path / "fresh"))


@pytest.mark.parametrize("before, after, value_type", [("int8", "float32", pa.float32()), ("float32", "binary", pa.uint8())])
def test_a_new_dtype_on_the_same_output_rewrites_every_part_from_the_cache(tmp_path, fake_openai, source, before, after, value_type):
    run_pipeline(openai_config(tmp_path, fake_openai, source, output__vector_dtype=before))
    requests = fake_openai.requests
    stats = run_pipeline(openai_config(tmp_path, fake_openai, source, output__vector_dtype=after))["stats"]
    assert (fake_openai.requests, stats["unchanged_rows"], stats["cache_hits"]) == (requests, 0, 60)
    assert pq.read_table(tmp_path / "out").schema.field("embedding").type.value_type == value_type


@pytest.mark.parametrize("dtype", ["int8", "binary"])
def test_similar_finds_a_row_by_its_own_text_in_a_compact_column(tmp_path, fake_openai, capsys, dtype):
    path = write_run_yaml(tmp_path, fake_openai, TEXTS[:20])
    run_pipeline(load_config(path, [f"output.vector_dtype={dtype}"]))
    assert main(["similar", str(tmp_path / "out"), "--query", "support ticket number 7", "-k", "2", "--config", str(path)]) == 0
    best = capsys.readouterr().out.splitlines()[1].split()
    assert (float(best[0]), best[1]) == (pytest.approx(1.0, abs=0.01), "7")


# The share of rows whose nearest row is float32's; binary keeps 16 bits of these 16-dimension
# random vectors: far from float32, far above chance (1 in 60).
@pytest.mark.parametrize("dtype, least", [("float16", 0.95), ("int8", 0.95), ("binary", 0.1)])
def test_neighbours_and_clusters_of_a_compact_column_are_near_those_of_float32(tmp_path, fake_openai, source, dtype, least):
    run_pipeline(openai_config(tmp_path, fake_openai, source))
    run_pipeline(openai_config(tmp_path, fake_openai, source, output__path=str(tmp_path / "compact"), output__vector_dtype=dtype))
    full, compact = read_output(tmp_path / "out"), read_output(tmp_path / "compact")
    assert compact.ids.to_pylist() == full.ids.to_pylist()
    first = {dtype: neighbours_table(output, k=1).column("neighbour_ids").to_pylist() for dtype, output in
             (("float32", full), (dtype, compact))}
    agree = np.mean([a == b for a, b in zip(first["float32"], first[dtype])])
    assert agree >= least, agree
    assert len(cluster_vectors(compact.vectors, k=3).labels) == len(compact.ids)
