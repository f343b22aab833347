"""The jobs users run on an output next: every row's nearest neighbours, and clusters.

Thin tasks over `pipeline.downstream.similarity` and `pipeline.downstream.clustering`; nothing here calls a model,
so no task retries. Each flow publishes its result table (and the cluster map) as artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pyarrow as pa
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.task_options import IN_MEMORY
from pipeline.downstream.clustering import Clusters, central_texts, cluster_vectors, draw_map, summary_table
from pipeline.downstream.similarity import Embedded, neighbours_table, read_output
from pipeline.sinks.parquet import write_file


@task(**IN_MEMORY)
def load(output: str, column: str | None = None) -> Embedded:
    """The output's ids, texts and vectors (of `column`, default the last run's), decoded to float32."""
    return read_output(output, column)


@task(**IN_MEMORY)
def find_neighbours(embedded: Embedded, k: int, method: str) -> pa.Table:
    """Every row's k nearest rows: exact up to a million rows, else an HNSW index."""
    return neighbours_table(embedded, k, method)


@task(**IN_MEMORY)
def fit_clusters(embedded: Embedded, k: int | None) -> Clusters:
    """k-means; k chosen by silhouette score when not given."""
    return cluster_vectors(embedded.vectors, k)


@flow(name="neighbours", log_prints=True)
def neighbours_flow(
    output: str, k: int = 10, method: str = "auto", to: str | None = None, column: str | None = None
) -> dict:
    """Write `neighbours.parquet` (id, neighbour_ids, scores) for every row with a vector."""
    embedded = load(output, column)
    table = cast(pa.Table, find_neighbours(embedded, k, method))  # sync: not a coroutine
    path = write_file(table, Path(to or f"{output}-neighbours") / "neighbours.parquet")
    create_table_artifact(
        table.slice(0, 20).to_pylist(), key="embedpipe-neighbours", description=f"first rows of {path}"
    )
    return {"rows": table.num_rows, "path": str(path)}


@flow(name="cluster", log_prints=True)
def cluster_flow(output: str, k: int | None = None, to: str | None = None, column: str | None = None) -> dict:
    """Write `clusters.parquet` (id, cluster, distance), `cluster_summary.parquet` and `clusters.png`."""
    embedded = load(output, column)
    clusters = fit_clusters(embedded, k)
    texts = embedded.texts.to_pylist() if embedded.texts is not None else [str(i) for i in embedded.ids.to_pylist()]
    centrals = central_texts(texts, clusters)
    folder = Path(to or f"{output}-clusters")
    write_file(
        pa.table({"id": embedded.ids, "cluster": clusters.labels, "distance": clusters.distances}),
        folder / "clusters.parquet",
    )
    summary = summary_table(clusters, centrals)
    write_file(summary, folder / "cluster_summary.parquet")
    title = f"{len(texts):,} rows of {output} in {clusters.k} clusters ({embedded.settings.get('model')})"
    picture = draw_map(embedded.vectors, clusters, centrals, folder / "clusters.png", title)
    create_table_artifact(
        summary.to_pylist(), key="embedpipe-clusters", description=f"clusters of {output}: {clusters.how}"
    )
    create_markdown_artifact(
        f"# Clusters of {output}\n\n{clusters.how}\n\nMap: `{picture.resolve()}`\n", key="embedpipe-cluster-map"
    )
    return {
        "k": clusters.k,
        "how": clusters.how,
        "sizes": clusters.sizes.tolist(),
        "folder": str(folder),
        "centrals": centrals,
    }
