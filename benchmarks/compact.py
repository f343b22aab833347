"""Compact vector columns (issue 23): bytes on disk, recall@10 and seconds per `output.vector_dtype`.

    .venv/bin/python -m benchmarks.compact            # the quickstart corpus and 20,000 generated 1536-d rows
    .venv/bin/python -m benchmarks.compact --quick    # 2,000 generated rows only, seconds

Two sets of float32 unit vectors: the quickstart's standard-library docstrings embedded with
all-MiniLM-L6-v2 (384 dimensions; `run_pipeline`, from the cache after the first time), and an
OpenAI-sized generated set (1536 dimensions; 100 topics of 20 subtopics, each row its topic,
its subtopic and noise, so that a row's nearest rows are its subtopic's). Each dtype is written
as a run publishes it: a float32 part (the staged part), then, for a compact dtype, the same
part encoded by `convert_parts`. Read is `read_output` (decoding included). Recall@10: held-out
queries (float32) against the other rows, the top 10 of full float32 against the top 10 that
the stored column finds as `similar` searches it (Hamming distance for binary). Seconds are the
median of three rounds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.downstream.similarity import read_output
from pipeline.sinks.compact import VectorLayout, convert_parts, recall_at_k
from pipeline.sinks.parquet import MANIFEST, write_file
from pipeline.sinks.vector_dtypes import ENCODINGS, file_encodings
from pipeline.unit_vectors import l2_normalise

ROOT = Path(__file__).resolve().parent.parent
QUERIES = 1_000
ROUNDS = 3


def generated(rows: int, dimensions: int = 1536, topics: int = 100, subtopics: int = 20, seed: int = 0) -> np.ndarray:
    """Unit vectors with nested cluster structure, as real embeddings have."""
    rng = np.random.default_rng(seed)
    topic = rng.normal(size=(topics, dimensions)).astype(np.float32)
    sub = rng.normal(size=(topics * subtopics, dimensions)).astype(np.float32)
    label = rng.integers(0, topics * subtopics, rows)
    noise = rng.normal(size=(rows, dimensions)).astype(np.float32)
    return l2_normalise(topic[label // subtopics] + 0.8 * sub[label] + 0.6 * noise)


def quickstart_vectors(work: Path) -> tuple[np.ndarray, pa.Table]:
    """The quickstart corpus's docstrings and their all-MiniLM-L6-v2 vectors (blank rows left out)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from quickstart import CONFIG, collect_docstrings

    from pipeline.config import load_config
    from pipeline.run.steps import run_pipeline

    data = work / "stdlib_docstrings.parquet"
    collect_docstrings().write_parquet(data)
    cache = ROOT / load_config(CONFIG).cache.path
    config = load_config(CONFIG, [f"source.path={data}", f"output.path={work / 'quickstart'}", f"cache.path={cache}"])
    run_pipeline(config)
    table = pq.read_table(work / "quickstart")
    table = table.filter(table["embedding"].is_valid())
    vectors = np.stack(table["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
    return vectors, table.drop_columns(["embedding"])


def measure(vectors: np.ndarray, columns: pa.Table, dtype: str, work: Path) -> dict:
    """Bytes, recall@10 and median write and read seconds of `vectors` stored as `dtype`."""
    layout = VectorLayout("embedding", dtype)
    flat = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])
    table = columns.append_column("embedding", flat)
    writes, reads = [], []
    for _ in range(ROUNDS):
        folder = work / dtype
        shutil.rmtree(folder, ignore_errors=True)
        started = time.perf_counter()
        part = write_file(table, folder / "part-00000.parquet")
        if not layout.plain:
            convert_parts([part], layout)
        writes.append(time.perf_counter() - started)
        (folder / MANIFEST).write_text(json.dumps({"columns": {"id": "id", "text": None, "vector": "embedding"}}))
        started = time.perf_counter()
        read_output(folder)
        reads.append(time.perf_counter() - started)
    params = file_encodings(pq.read_schema(part).metadata).get("embedding", {})
    held = min(QUERIES, len(vectors) // 5)
    return {
        "file_bytes": part.stat().st_size,
        "vector_bytes": _column_bytes(part, "embedding"),
        "recall": recall_at_k(vectors[:held], vectors[held:], layout, params),
        "write_s": statistics.median(writes),
        "read_s": statistics.median(reads),
    }


def _column_bytes(path: Path, column: str) -> int:
    """Compressed bytes of `column`'s chunks in every row group of `path`."""
    meta = pq.ParquetFile(path).metadata
    return sum(
        meta.row_group(g).column(c).total_compressed_size
        for g in range(meta.num_row_groups)
        for c in range(meta.num_columns)
        if meta.row_group(g).column(c).path_in_schema.split(".")[0] == column
    )


def report(name: str, vectors: np.ndarray, columns: pa.Table, work: Path) -> list[str]:
    """Markdown rows, one per dtype, for one set of vectors."""
    results = {dtype: measure(vectors, columns, dtype, work) for dtype in ENCODINGS}
    base = results["float32"]
    rows = []
    for dtype, r in results.items():
        ratios = f"{r['vector_bytes'] / base['vector_bytes']:.3f} | {r['file_bytes'] / base['file_bytes']:.3f}"
        rows.append(f"| {name} | {dtype} | {ratios} | {r['recall']:.3f} | {r['write_s']:.3f} | {r['read_s']:.3f} |")
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 generated rows only")
    parser.add_argument("--rows", type=int, default=20_000, help="generated rows (default: 20,000)")
    args = parser.parse_args(argv)
    print("| vectors | dtype | vector column bytes ÷ float32 | file bytes ÷ float32 | recall@10 | write s | read s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="embedpipe-compact-") as tmp:
        work = Path(tmp)
        sets = []
        if not args.quick:
            vectors, columns = quickstart_vectors(work)
            sets.append((f"quickstart ({len(vectors):,} × {vectors.shape[1]})", vectors, columns))
        rows = 2_000 if args.quick else args.rows
        vectors = generated(rows + QUERIES)
        ids = pa.table({"id": pa.array(np.arange(len(vectors)))})
        sets.append((f"generated ({len(vectors):,} × {vectors.shape[1]})", vectors, ids))
        for name, vectors, columns in sets:
            report(name, vectors, columns, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
