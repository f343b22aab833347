"""k-means over an output's vectors: a cluster per row, the clusters' sizes and most central
texts, and a map of the clusters a person can look at.

k, when not given, is the candidate with the best silhouette score on a sample of rows
(cosine distance; vectors are unit length). MiniBatchKMeans keeps a million rows cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.errors import EmbedpipeError

K_CANDIDATES = (2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30)
SAMPLE_ROWS = 5_000  # rows the silhouette score is computed on when choosing k


@dataclass(frozen=True)
class Clusters:
    """Each row's cluster and its distance to the cluster's centre; the centres; how k was set."""

    labels: np.ndarray
    distances: np.ndarray
    centres: np.ndarray
    k: int
    how: str  # "k=…, as given", or the silhouette scores that chose k

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.k)


def choose_k(vectors: np.ndarray, candidates=K_CANDIDATES, seed: int = 0) -> tuple[int, str]:
    """The candidate k with the best silhouette score on a sample; and a line saying so."""
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(seed)
    sample = vectors[rng.choice(len(vectors), size=min(SAMPLE_ROWS, len(vectors)), replace=False)]
    usable = [k for k in candidates if 2 <= k < len(sample)]
    if not usable:
        return 1, "one cluster: too few rows to compare any k"
    scores = {k: float(silhouette_score(sample, _fit(sample, k, seed).labels_, metric="cosine")) for k in usable}
    best = max(scores, key=lambda k: scores[k])
    listed = ", ".join(f"k={k}: {s:.3f}" for k, s in scores.items())
    return best, f"k={best}, the best silhouette score on {len(sample):,} sampled rows ({listed})"


def cluster_vectors(vectors: np.ndarray, k: int | None = None, seed: int = 0) -> Clusters:
    """k-means with `k` clusters, or with the k `choose_k` picks."""
    if len(vectors) == 0:
        raise EmbedpipeError("the output has no vectors to cluster")
    if k is not None and not 1 <= k <= len(vectors):
        raise EmbedpipeError(f"--k {k}: choose between 1 and the {len(vectors):,} rows with a vector")
    k, how = (k, f"k={k}, as given") if k is not None else choose_k(vectors, seed=seed)
    model = _fit(vectors, k, seed)
    distances = np.linalg.norm(vectors - model.cluster_centers_[model.labels_], axis=1)
    return Clusters(
        model.labels_.astype(np.int32), distances.astype(np.float32), model.cluster_centers_.astype(np.float32), k, how
    )


def _fit(vectors: np.ndarray, k: int, seed: int):
    from sklearn.cluster import MiniBatchKMeans

    return MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4_096).fit(vectors)


def central_texts(texts: list[str | None], clusters: Clusters, per_cluster: int = 3) -> list[list[str]]:
    """For each cluster, the texts of its rows nearest the centre, nearest first."""
    order = np.lexsort((clusters.distances, clusters.labels))  # by cluster, then by distance
    starts = np.searchsorted(clusters.labels[order], np.arange(clusters.k))
    return [
        [texts[i] or "" for i in order[start : start + min(per_cluster, size)]]
        for start, size in zip(starts, clusters.sizes)
    ]


def summary_table(clusters: Clusters, centrals: list[list[str]]) -> pa.Table:
    """One row per cluster: id, size, and its most central texts."""
    return pa.table(
        {
            "cluster": pa.array(np.arange(clusters.k, dtype=np.int32)),
            "size": pa.array(clusters.sizes.astype(np.int64)),
            "central_texts": pa.array(centrals, type=pa.list_(pa.string())),
        }
    )


def draw_map(vectors: np.ndarray, clusters: Clusters, centrals: list[list[str]], path: Path, title: str) -> Path:
    """A 2-D map of up to 20,000 rows coloured by cluster, each centre numbered, and beside it
    a key: each cluster's number, size and the start of its most central text.

    The plane is the one that best spreads the cluster centres (PCA fitted on the centres),
    so clusters sit apart instead of piling up in the middle as on the rows' own first two
    components."""
    import matplotlib

    matplotlib.use("Agg")  # no display: draw to a file
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    shown = np.random.default_rng(0).choice(len(vectors), size=min(20_000, len(vectors)), replace=False)
    plane = PCA(n_components=2, random_state=0).fit(clusters.centres if clusters.k >= 3 else vectors[shown])
    points, centres = plane.transform(vectors[shown]), plane.transform(clusters.centres)
    colours = [plt.get_cmap("tab20")(i % 20) if i < 20 else plt.get_cmap("tab20b")(i % 20) for i in range(clusters.k)]
    figure, (axes, key) = plt.subplots(1, 2, figsize=(16, 9), dpi=100, gridspec_kw={"width_ratios": [3, 2]})
    axes.scatter(
        points[:, 0],
        points[:, 1],
        c=[colours[label] for label in clusters.labels[shown]],
        s=12,
        alpha=0.6,
        linewidths=0,
    )
    for cluster, (x, y) in enumerate(centres):
        axes.annotate(
            str(cluster),
            (x, y),
            fontsize=9,
            fontweight="bold",
            ha="center",
            va="center",
            bbox={"boxstyle": "circle,pad=0.25", "fc": "white", "ec": colours[cluster], "lw": 2},
        )
    axes.set_title(title)
    axes.set_xticks([]), axes.set_yticks([])
    key.axis("off")
    order = np.argsort(-clusters.sizes)
    for line, cluster in enumerate(order[:40]):
        y = 1 - line / max(len(order[:40]), 20)
        key.text(0, y, "●", color=colours[cluster], fontsize=12, va="top", transform=key.transAxes)
        central = centrals[cluster][0] if centrals[cluster] else ""
        text = f"{cluster:>2}  {clusters.sizes[cluster]:>6,}  {_short(central, 8)}"
        key.text(0.04, y, text, fontsize=9, family="monospace", va="top", transform=key.transAxes)
    key.set_title("cluster, rows, most central text", loc="left", fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def _short(text: str, words: int = 6) -> str:
    parts = text.split()
    return " ".join(parts[:words]) + (" …" if len(parts) > words else "")
