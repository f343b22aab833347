"""The output's vector columns: what the metadata records of them, and what happens to them
once every partition is staged (columns carried from the last output, compact encodings)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from pipeline import __version__
from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.incremental.unchanged_files import PreviousOutput
from pipeline.sinks.compact import VectorLayout, convert_parts
from pipeline.sinks.migration import CarriedColumns
from pipeline.sources.reader import text_columns

log = logging.getLogger("embedpipe")


def check_cut(config: Config, dimensions: int) -> None:
    """Refuse a `dimensions_truncate` that keeps no fewer dimensions than the model makes."""
    truncate = config.output.dimensions_truncate
    if truncate is not None and truncate >= dimensions:
        raise ConfigError(
            f"output.dimensions_truncate {truncate}: {config.embedding.model} makes {dimensions} dimensions; "
            f"set it below {dimensions}, or remove it"
        )


def output_metadata(config: Config, dimensions: int, max_tokens: int, overlap: int) -> dict:
    """What Parquet key-value metadata records: how the vectors were made. Never a secret."""
    layout = VectorLayout.of(config.output)
    column = {
        "provider": config.embedding.provider,
        "model": config.embedding.model,
        "dimensions": layout.dimensions(dimensions),
        "model_dimensions": dimensions,
        "dtype": layout.dtype,
        "chunking": {"max_tokens": max_tokens, "overlap_tokens": overlap},
    }
    return {
        "provider": config.embedding.provider,
        "model": config.embedding.model,
        "dimensions": dimensions,
        "chunking": {"max_tokens": max_tokens, "overlap_tokens": overlap, "encoding": "cl100k_base"},
        "columns": {
            "id": config.source.id_column,
            "text": config.source.text_column,
            "vector": config.output.vector_column,
        },
        "vectors": {layout.column: column},
        "pipeline_version": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def finish_vector_columns(config: Config, staged: list[Path], metadata: dict, previous: PreviousOutput | None) -> dict:
    """Carry the last output's other vector columns into the `staged` parts, encode this run's
    column as configured; returns the manifest's record of every vector column (recall@10
    against float32 where a compact column was measured)."""
    output = config.output
    carried = CarriedColumns.read(
        output.path, output.vector_column, config.source.id_column, text_columns(config.source)
    )
    if carried is not None:
        carried.carry_into(staged)
        log.info("vector columns %s carried from the last output", ", ".join(carried.values))
    vectors = {**(carried.records if carried else {}), **metadata["vectors"]}
    layout = VectorLayout.of(output)
    if layout.plain:
        return vectors
    measured = convert_parts(staged, layout)
    if "recall_at_10" not in measured and previous:  # every part kept: as the last run measured
        measured = {**previous.vectors.get(layout.column, {}), **measured}
    log.info("vector column %s stored as %s: %s", layout.column, layout.dtype, measured)
    return {**vectors, layout.column: {**vectors[layout.column], **measured}}
