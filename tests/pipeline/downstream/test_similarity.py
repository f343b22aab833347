import numpy as np
import pyarrow as pa
import pytest

from pipeline.downstream.similarity import (
    Embedded,
    approximate_top_k,
    exact_top_k,
    nearest,
    neighbours_table,
    read_output,
)
from pipeline.errors import EmbedpipeError
from pipeline.unit_vectors import l2_normalise
from pipeline.run.steps import run_pipeline
from tests.conftest import openai_config, write_parquet


def clustered_vectors(rows: int, dims: int = 64, centres: int = 50, seed: int = 0) -> np.ndarray:
    """Unit vectors around a few centres, the shape real embeddings have."""
    rng = np.random.default_rng(seed)
    middle = rng.normal(size=(centres, dims))
    return l2_normalise((middle[rng.integers(0, centres, rows)] + 0.6 * rng.normal(size=(rows, dims))).astype(np.float32))


@pytest.mark.parametrize("rows, k, block", [(50, 5, 7), (300, 10, 4_096), (8, 20, 3)])
def test_exact_search_in_blocks_finds_what_a_full_sort_finds(rows, k, block):
    vectors = clustered_vectors(rows)
    indices, scores = exact_top_k(vectors, vectors, k, skip_self=True, block=block)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.argsort(-sims, axis=1, kind="stable")[:, : min(k, rows - 1)]
    assert np.allclose(scores, np.take_along_axis(sims, expected, axis=1), atol=1e-6)
    assert (indices != np.arange(rows)[:, None]).all()


def test_the_approximate_index_recalls_at_least_95_percent_of_the_exact_top_10():
    vectors = clustered_vectors(20_000)
    exact, _ = exact_top_k(vectors, vectors, 10, skip_self=True)
    approximate, scores = approximate_top_k(vectors, vectors, 10, skip_self=True)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approximate, exact)])
    assert recall >= 0.95, recall
    assert (approximate != np.arange(len(vectors))[:, None]).all() and (np.diff(scores, axis=1) <= 1e-5).all()


def test_the_neighbours_table_names_each_rows_neighbours_by_id():
    vectors = l2_normalise(np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32))
    table = neighbours_table(Embedded(pa.array(["a", "b", "c", "d"]), None, vectors, {}), k=1)
    assert table.column("neighbour_ids").to_pylist() == [["b"], ["a"], ["d"], ["c"]]
    assert table.column("scores").type == pa.list_(pa.float32())


def test_an_unknown_method_is_a_clear_error():
    with pytest.raises(EmbedpipeError, match="method 'fast': use auto, exact or approximate"):
        nearest(np.ones((1, 2), np.float32), np.ones((2, 2), np.float32), 1, method="fast")


def test_read_output_keeps_rows_with_a_vector_and_reads_their_text(tmp_path, fake_openai):
    source = write_parquet(tmp_path / "in.parquet", {"id": [1, 2, 3], "text": ["alpha", None, "gamma"]})
    run_pipeline(openai_config(tmp_path, fake_openai, source))
    embedded = read_output(tmp_path / "out")
    assert (embedded.ids.to_pylist(), embedded.texts.to_pylist(), embedded.vectors.shape) == ([1, 3], ["alpha", "gamma"], (2, 16))
    with pytest.raises(EmbedpipeError, match="no _manifest.json here"):
        read_output(tmp_path)


@pytest.mark.parametrize(("made_with", "expected_backend"), [({"backend": "static"}, "static"), ({}, "auto")])
def test_a_query_is_embedded_through_the_backend_the_output_was_made_with(monkeypatch, made_with, expected_backend):
    from pipeline.config import EmbeddingConfig
    from pipeline.downstream import similarity

    class Recorder:
        dimensions = 4

        def __init__(self, config):
            self.config = config

        def embed(self, texts, counts):
            return np.ones((len(texts), 4), dtype=np.float32) / 2

        def close(self):
            pass

    made = []
    monkeypatch.setattr(similarity, "get_embedder", lambda config, key: made.append(Recorder(config)) or made[-1])
    settings = {"provider": "local", "model": "all-MiniLM-L6-v2", "dimensions": 4, **made_with,
                "chunking": {"max_tokens": 192, "overlap_tokens": 32}}
    similarity.embed_query("split a string", settings, EmbeddingConfig(), None)
    assert made[0].config.backend == expected_backend
