import numpy as np
import pytest

from pipeline.downstream.clustering import central_texts, choose_k, cluster_vectors, draw_map, summary_table
from pipeline.errors import EmbedpipeError
from pipeline.unit_vectors import l2_normalise


def blobs(per_blob: int = 200, blobs: int = 3, dims: int = 32, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.eye(dims)[:blobs] * 5
    labels = np.repeat(np.arange(blobs), per_blob)
    return l2_normalise((centres[labels] + rng.normal(size=(len(labels), dims))).astype(np.float32)), labels


def test_k_is_chosen_by_silhouette_and_the_blobs_are_found():
    vectors, truth = blobs()
    k, how = choose_k(vectors)
    assert k == 3 and how.startswith("k=3, the best silhouette score on 600 sampled rows")
    clusters = cluster_vectors(vectors)
    assert sorted(clusters.sizes) == [200, 200, 200]
    assert all(len(set(clusters.labels[truth == b])) == 1 for b in range(3))


def test_central_texts_are_the_rows_nearest_each_centre(tmp_path):
    vectors, truth = blobs()
    clusters = cluster_vectors(vectors, k=3)
    texts = [f"blob {b} row {i}" for i, b in enumerate(truth)]
    centrals = central_texts(texts, clusters, per_cluster=2)
    for cluster, nearest in enumerate(centrals):
        members = np.flatnonzero(clusters.labels == cluster)
        best = members[np.argsort(clusters.distances[members])[:2]]
        assert nearest == [texts[i] for i in best]
    assert summary_table(clusters, centrals).column("size").to_pylist() == clusters.sizes.tolist()
    png = draw_map(vectors, clusters, centrals, tmp_path / "map.png", "three blobs")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


@pytest.mark.parametrize("k", [0, 601])
def test_an_impossible_k_is_a_clear_error(k):
    with pytest.raises(EmbedpipeError, match=f"--k {k}: choose between 1 and the 600 rows"):
        cluster_vectors(blobs()[0], k=k)
