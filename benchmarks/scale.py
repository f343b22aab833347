"""How embedpipe's cost grows with the input, towards a hundred million rows (issue 20). A benchmark, not a test.

    .venv/bin/python -m benchmarks.scale                          # 1,000,000 rows, several minutes
    .venv/bin/python -m benchmarks.scale --rows 1000000,10000000  # and the per-row cost and RSS ratios
    .venv/bin/python -m benchmarks.scale --keys 100000000         # the vector cache alone, filled key by key
    .venv/bin/python -m benchmarks.scale --quick                  # 20,000 rows and 200,000 keys, under a minute

Rows: an input Parquet of short texts (10-20 words drawn from a vocabulary, about 30% of rows
exact copies of an earlier row's text anywhere before it in the file, so copies fall in other
record batches) goes through `run_pipeline` in a child process, as `embedpipe run` runs it,
against the loopback OpenAI server in its own process (64 dimensions, no limits, none configured),
answering cheaply (`quick_server_class`): the server's CPU is not the pipeline's cost.
A cold run into a fresh cache gives rows/s and the child's peak RSS (VmHWM); the median of three
fully cached runs, each into a new output, is compared with its I/O floor: polars reading the input, then writing and
reading back a table of the output's columns (the input's, and 64-float32 vectors). Rounds one to seven left the text
column out of that table; that floor is printed beside it. The cache's bytes on disk
(SQLite and its WAL included) are compared with the raw vectors: distinct texts × 64 × 4.

Keys: a `VectorCache` filled directly, 2,048 keys a `put_many`, with insert µs/key over each
tenth of the keys, lookup µs/key of 10,000 random keys already stored and of 10,000 it lacks
(a cold run's lookups), and bytes on disk ÷ raw.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.proc import peak_rss_kib

DIMENSIONS = 64  # of the pipeline's vectors
KEY_DIMENSIONS = 16  # of the vectors in --keys
FLOAT_BYTES = 4
DUPLICATE_SHARE = 0.3  # of rows whose text is an earlier row's
WORDS = (10, 20)  # words per text, both included
VOCABULARY_SIZE = 5_000
INPUT_ROW_GROUP = 65_536  # rows per row group of the input, as throughput.py writes
WRITE_CHUNK = 262_144  # rows generated and written at a time
KEYS_PER_PUT = 2_048
OUTPUT_COMPRESSION = "snappy"  # pyarrow's default, as the output is written: the floor's table writes what it does
CACHED_RUNS = 3  # fully cached runs a size, the median taken: one run varies by 10-20% on 2 noisy cores
LOOKUP_KEYS = 10_000
BENCH_KEY_ENV = "EMBEDPIPE_BENCH_KEY"  # named, as for any server not OpenAI's; the key itself is passed in
FORK = multiprocessing.get_context("fork")

# (figure, target, whether a figure meets it)
TARGETS = {
    "cold rows/s": ("≥ 50,000", lambda x: x >= 50_000),
    "cached ÷ floor": ("≤ 3", lambda x: x <= 3),
    "cache bytes ÷ raw": ("≤ 1.1", lambda x: x <= 1.1),
    "per-row cost ratio": ("≤ 1.1", lambda x: x <= 1.1),
    "RSS ratio": ("≤ 1.1", lambda x: x <= 1.1),
    "peak RSS MB": ("< 1,500 at the largest size", lambda x: x < 1_500),
}


# ---- the input --------------------------------------------------------------------------------


@functools.cache
def vocabulary(size: int = VOCABULARY_SIZE) -> tuple[str, ...]:
    """The `size` commonest lower-case words of the standard library's source, commonest first:
    real words with a realistic skew, the same on every run of one Python."""
    counts: Counter[str] = Counter()
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        counts.update(re.findall(r"\b[a-z]{2,14}\b", path.read_text(encoding="utf-8", errors="replace")))
        if len(counts) > 4 * size:
            break
    return tuple(word for word, _ in counts.most_common(size))


def mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-spread uint64 hash of each value, vectorised."""
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def texts_of(indices: np.ndarray, words: tuple[str, ...]) -> list[str]:
    """Distinct text number `i` of the input, for each of `indices`: its length and each word
    come from hashing (i, position), so a text is the same wherever it is asked for. Word ranks
    are log-uniform (about Zipf's law): the commonest words are drawn most."""
    low, high = WORDS
    slots = indices.astype(np.uint64)[:, None] * np.uint64(high + 1) + np.arange(high + 1, dtype=np.uint64)
    hashes = mix64(slots)
    lengths = (low + hashes[:, 0] % np.uint64(high - low + 1)).astype(np.int64)
    uniform = (hashes[:, 1:] >> np.uint64(11)).astype(np.float64) / float(2**53)
    ranks = (np.power(float(len(words)), uniform) - 1).astype(np.int64)
    return [" ".join(words[r] for r in row[:n]) for row, n in zip(ranks.tolist(), lengths.tolist())]


def text_indices(rng: np.random.Generator, rows: int, distinct_so_far: int) -> tuple[np.ndarray, int]:
    """Which distinct text each of `rows` next rows holds, given `distinct_so_far` texts already
    used: a new one, or (with DUPLICATE_SHARE) one drawn uniformly from all used before it.
    Returns the indices and the new count of distinct texts."""
    new = rng.random(rows) >= DUPLICATE_SHARE
    if distinct_so_far == 0:
        new[0] = True  # the file's first row has nothing to copy
    new_before = np.cumsum(new) - new  # new texts among the rows before each row
    available = distinct_so_far + new_before
    copies = (rng.random(rows) * available).astype(np.int64)
    indices = np.where(new, distinct_so_far + new_before, copies)
    return indices, distinct_so_far + int(new.sum())


def input_batches(rows: int, seed: int = 20) -> Iterator[pa.RecordBatch]:
    """The input's rows (id, text), WRITE_CHUNK at a time: nothing but the count of distinct texts
    is carried from one chunk to the next, so 100,000,000 rows stream in bounded memory."""
    rng, words, distinct = np.random.default_rng(seed), vocabulary(), 0
    for start in range(0, rows, WRITE_CHUNK):
        count = min(WRITE_CHUNK, rows - start)
        indices, distinct = text_indices(rng, count, distinct)
        ids = pa.array(np.arange(start, start + count, dtype=np.int64))
        yield pa.RecordBatch.from_arrays([ids, pa.array(texts_of(indices, words))], names=["id", "text"])


def write_input(path: Path, rows: int) -> None:
    """Write the input Parquet of `rows` rows, row groups of INPUT_ROW_GROUP rows."""
    schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for batch in input_batches(rows):
            writer.write_batch(batch, row_group_size=INPUT_ROW_GROUP)


# ---- the server and the pipeline's runs ---------------------------------------------------------


def quick_server_class():
    """The tests' fake OpenAI with a cheap answer: the pipeline is what is measured, and on 2
    cores every CPU second the server spends is one the pipeline does not get. It checks nothing
    the pipeline's own checks have not, counts tokens as bytes ÷ 4 and draws each vector from a
    fixed table by the text's CRC-32, where the tests' fake tokenises and seeds a generator per text."""
    from tests.fakes.openai_server import FakeOpenAI

    table = unit_vectors(65_536, DIMENSIONS, seed=5).astype("<f4")
    encoded = [base64.b64encode(row.tobytes()).decode("ascii") for row in table]

    class QuickOpenAI(FakeOpenAI):
        def answer(self, body: dict) -> tuple[int, dict, dict]:
            texts = body["input"]
            items = [
                {"object": "embedding", "index": i, "embedding": encoded[zlib.crc32(text.encode()) & 0xFFFF]}
                for i, text in enumerate(texts)
            ]
            tokens = sum(len(text) for text in texts) // 4
            usage = {"prompt_tokens": tokens, "total_tokens": tokens}
            return 200, {"object": "list", "data": items, "model": body["model"], "usage": usage}, {}

    return QuickOpenAI


def serve(conn) -> None:
    """The loopback server, in its own process, until told to stop; answers "cpu" with its own
    CPU seconds so far."""
    with quick_server_class()(dimensions=DIMENSIONS) as server:
        conn.send(server.base_url)
        while conn.recv() == "cpu":
            conn.send(time.process_time())


@dataclass
class Server:
    """The running server's process, its pipe and its base URL."""

    process: multiprocessing.process.BaseProcess
    conn: object
    base_url: str

    def cpu_seconds(self) -> float:
        self.conn.send("cpu")
        return self.conn.recv()

    def stop(self) -> None:
        self.conn.send("stop")
        self.process.join(timeout=10)


def start_server() -> Server:
    parent, child = FORK.Pipe()
    process = FORK.Process(target=serve, args=(child,), daemon=True)
    process.start()
    return Server(process, parent, parent.recv())


PARTITION_ROWS: int | None = None  # --partition-rows: source.partition_rows, else the default


def pipeline_config(base_url: str, source: Path, cache: Path, output: Path) -> dict:
    """A config as a user's: the openai provider at the loopback server, no limits named."""
    partitioning = {"partition_rows": PARTITION_ROWS} if PARTITION_ROWS else {}
    return {
        "source": {"path": str(source), **partitioning},
        "embedding": {
            "provider": "openai",
            "model": "text-embedding-3-small",
            "dimensions": DIMENSIONS,
            "base_url": base_url,
            "api_key_env": BENCH_KEY_ENV,
        },
        "cache": {"path": str(cache)},
        "output": {"path": str(output)},
    }


def run_pipeline_in_child(config: dict, path: Path) -> dict:
    """Run the pipeline on `config` in a fresh Python process (`benchmarks/run_child.py`); what it printed."""
    path.write_text(json.dumps(config))
    child = subprocess.run(
        [sys.executable, "-m", "benchmarks.run_child", str(path)], capture_output=True, text=True
    )
    if child.returncode != 0:
        raise RuntimeError(f"the pipeline's run failed ({child.returncode}):\n{child.stderr[-4000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


# ---- the floor and the cache's size ---------------------------------------------------------------


def vector_column(rows: int) -> pl.Series:
    """The output's vector column: `rows` random 64-float32 vectors, as a fixed-size list."""
    vectors = np.random.default_rng(1).standard_normal((rows, DIMENSIONS), dtype=np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIMENSIONS)
    return pl.from_arrow(column).alias("embedding")


def io_floor_seconds(source: Path, rows: int, tmp: Path, text: bool = True) -> float:
    """Seconds for polars to read the input, then write and read back a table the size of the
    output: the input's columns and a vector column, as the output holds. `text=False`: ids and
    vectors only, the floor of the first seven rounds."""
    vectors, target = vector_column(rows), tmp / "floor.parquet"
    ids = None if text else pl.DataFrame({"id": np.arange(rows, dtype=np.int64)})
    settle_disk()
    started = time.perf_counter()
    read = pl.read_parquet(source)
    (read if ids is None else ids).with_columns(vectors).write_parquet(target, compression=OUTPUT_COMPRESSION)
    pl.read_parquet(target)
    seconds = time.perf_counter() - started
    target.unlink()
    return seconds


def settle_disk() -> None:
    """Write back what the steps before left in the page cache, before a timed step: a floor
    measured while the run before it was still being written back took 4.5 s at 1M rows, 1.3 s alone."""
    os.sync()


def bytes_on_disk(directory: Path) -> int:
    """The sizes of every file under `directory` (SQLite's -wal and -shm files included)."""
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


# ---- rows ---------------------------------------------------------------------------------------


def cached_run(server: Server, source: Path, rows: int, cache: Path, output: Path, tmp: Path) -> dict:
    """`CACHED_RUNS` fully cached runs, each into a new output and each followed by its floor, with
    and without the text column (`io_floor_seconds`): the median run, the median floors, and the
    median of each run's ratio to the floor measured beside it (the floor moved 0.8-1.8 s at 1M
    from one hour to the next here: a ratio of figures taken minutes apart is mostly that)."""
    runs = []
    for _ in range(CACHED_RUNS):
        remove(output)
        settle_disk()
        run = run_pipeline_in_child(pipeline_config(server.base_url, source, cache, output), tmp / "w.json")
        if run["stats"]["embedded_chunks"]:
            raise RuntimeError(f"the cached run sent {run['stats']['embedded_chunks']:,} chunks")
        floors = {text: io_floor_seconds(source, rows, tmp, text=text) for text in (True, False)}
        runs.append({**run, "floor": floors[True], "floor_without_text": floors[False]})
    ordered = sorted(runs, key=lambda r: r["seconds"])
    return {
        **ordered[len(ordered) // 2],
        "all_seconds": [r["seconds"] for r in runs],
        "floor": statistics.median(r["floor"] for r in runs),
        "floor_without_text": statistics.median(r["floor_without_text"] for r in runs),
        "ratio": statistics.median(r["seconds"] / r["floor"] for r in runs),
        "ratio_without_text": statistics.median(r["seconds"] / r["floor_without_text"] for r in runs),
    }


def measure_rows(rows: int, server: Server, tmp: Path) -> dict:
    """A cold run and a fully cached run of an input of `rows` rows, and their floor."""
    source, cache = tmp / f"input-{rows}.parquet", tmp / f"cache-{rows}"
    started = time.perf_counter()
    write_input(source, rows)
    print(f"{rows:,} rows: input written in {time.perf_counter() - started:.1f} s", flush=True)
    settle_disk()
    cpu_before = server.cpu_seconds()
    cold = run_pipeline_in_child(pipeline_config(server.base_url, source, cache, tmp / f"cold-{rows}"), tmp / "c.json")
    server_cpu = server.cpu_seconds() - cpu_before
    print(
        f"  cold run {cold['seconds']:.1f} s (CPU: the pipeline's {cold['cpu_seconds']:.1f} s, the fake server's "
        f"{server_cpu:.1f} s)",
        flush=True,
    )
    cached = cached_run(server, source, rows, cache, tmp / f"warm-{rows}", tmp)
    floor, floor_without_text = cached["floor"], cached["floor_without_text"]
    distinct = cold["stats"]["distinct_texts"]
    result = {
        "rows": rows,
        "distinct": distinct,
        "cold_seconds": cold["seconds"],
        "cold_cpu": cold["cpu_seconds"],
        "server_cpu": server_cpu,
        "cached_seconds": cached["seconds"],
        "cached_runs": cached["all_seconds"],
        "floor_seconds": floor,
        "floor_without_text_seconds": floor_without_text,
        "cached_ratio": cached["ratio"],
        "cached_ratio_without_text": cached["ratio_without_text"],
        "peak_mb": cold["peak_kib"] / 1024,
        "cached_peak_mb": cached["peak_kib"] / 1024,
        "cache_bytes": bytes_on_disk(cache),
        "raw_bytes": distinct * DIMENSIONS * FLOAT_BYTES,
    }
    runs = ", ".join(f"{s:.1f}" for s in cached["all_seconds"])
    print(
        f"  cached run {cached['seconds']:.1f} s (the median of {runs}), floor {floor:.2f} s "
        f"({floor_without_text:.2f} s without the text column), each run ÷ its floor: median {cached['ratio']:.2f} "
        f"({cached['ratio_without_text']:.2f})",
        flush=True,
    )
    for path in (source, tmp / f"cold-{rows}", tmp / f"warm-{rows}"):
        remove(path)
    remove(cache)
    return result


def remove(path: Path) -> None:
    """Remove a file or a directory tree, if there."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def figure(value: float) -> str:
    """A figure as printed: whole above 100 (rows/s, MB), else to two places (ratios)."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def verdict(name: str, value: float) -> str:
    """`name`'s target and whether `value` meets it."""
    target, met = TARGETS[name]
    return f"target {target}: {'met' if met(value) else 'NOT met'}"


def headline(r: dict) -> dict:
    """One size's figures that have targets, by their names in TARGETS."""
    return {
        "cold rows/s": r["rows"] / r["cold_seconds"],
        "cached ÷ floor": r["cached_ratio"],
        "cache bytes ÷ raw": r["cache_bytes"] / r["raw_bytes"],
    }


def rows_table(results: list[dict]) -> str:
    """The markdown table of every size's figures, targets in the header."""
    header = (
        "| rows | distinct texts | cold s | cold rows/s (≥ 50,000) | cold CPU s: pipeline, fake server "
        "| cached s | floor s (without text) | cached ÷ floor (≤ 3) (without text) | peak RSS MB, cold (cached) "
        "| cache bytes ÷ raw (≤ 1.1) |"
    )
    lines = [header, "|" + " --- |" * (header.count("|") - 1)]
    for r in results:
        h = headline(r)
        lines.append(
            f"| {r['rows']:,} | {r['distinct']:,} | {r['cold_seconds']:.1f} | {h['cold rows/s']:,.0f} "
            f"| {r['cold_cpu']:.1f}, {r['server_cpu']:.1f} | {r['cached_seconds']:.1f} "
            f"| {r['floor_seconds']:.2f} ({r['floor_without_text_seconds']:.2f}) "
            f"| {h['cached ÷ floor']:.1f} ({r['cached_ratio_without_text']:.1f}) "
            f"| {r['peak_mb']:,.0f} ({r['cached_peak_mb']:,.0f}) "
            f"| {h['cache bytes ÷ raw']:.2f} |"
        )
    return "\n".join(lines)


def scaling(small: dict, large: dict) -> dict:
    """How the large size's costs compare with the small one's, by their names in TARGETS."""
    per_row = {
        run: large[f"{run}_seconds"] / large["rows"] / (small[f"{run}_seconds"] / small["rows"])
        for run in ("cold", "cached")
    }
    return {
        "per-row cost ratio": per_row["cold"],
        "cached per-row cost ratio": per_row["cached"],
        "RSS ratio": large["peak_mb"] / small["peak_mb"],
        "peak RSS MB": large["peak_mb"],
    }


def report_rows(results: list[dict]) -> None:
    """The table, each figure against its target, and (with two sizes or more) how the largest
    size's costs compare with the smallest's."""
    print("\n" + rows_table(results) + "\n")
    for r in results:
        figures = ", ".join(f"{name} {figure(value)} ({verdict(name, value)})" for name, value in headline(r).items())
        print(f"{r['rows']:,} rows: {figures}")
    if len(results) < 2:
        return
    small, large = min(results, key=lambda r: r["rows"]), max(results, key=lambda r: r["rows"])
    print(f"{large['rows']:,} rows ÷ {small['rows']:,} rows:")
    for name, value in scaling(small, large).items():
        print(f"  {name} {figure(value)}" + (f" ({verdict(name, value)})" if name in TARGETS else ""))


# ---- keys ---------------------------------------------------------------------------------------


def key_text(index: int) -> str:
    """The text stored under key number `index` (the cache keys it by its sha256)."""
    return f"key {index}"


def unit_vectors(count: int, dimensions: int, seed: int = 2) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dimensions), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def lookup_micros(cache, stored: int, rng: np.random.Generator) -> float:
    """µs per key of looking up LOOKUP_KEYS random keys among the `stored` first; each must be found."""
    indices = np.unique(rng.integers(0, stored, size=min(LOOKUP_KEYS, stored)))
    texts = [key_text(i) for i in indices.tolist()]
    started = time.perf_counter()
    found = cache.lookup(texts)
    seconds = time.perf_counter() - started
    if len(found.vectors) != len(texts):
        raise RuntimeError(f"{len(texts) - len(found.vectors):,} of {len(texts):,} stored keys not found")
    return seconds / len(texts) * 1e6


def miss_micros(cache) -> float:
    """µs per key of looking up LOOKUP_KEYS keys the cache lacks (a cold run's lookups); none may be found."""
    texts = [f"absent {i}" for i in range(LOOKUP_KEYS)]
    started = time.perf_counter()
    found = cache.lookup(texts)
    seconds = time.perf_counter() - started
    if found.vectors:
        raise RuntimeError(f"{len(found.vectors):,} absent keys found")
    return seconds / len(texts) * 1e6


def fill_cache(keys: int, path: Path) -> Iterator[dict]:
    """Put `keys` keys in a fresh `VectorCache` at `path`, KEYS_PER_PUT a `put_many`; after each
    tenth of them, yield the keys stored, the insert µs/key of that tenth, the lookup µs/key and
    the bytes on disk. Only one `put_many`'s keys are held at a time."""
    from pipeline.cache.vectors import VectorCache

    cache = VectorCache(path, "bench/scale", KEY_DIMENSIONS)
    vectors, rng = unit_vectors(KEYS_PER_PUT, KEY_DIMENSIONS), np.random.default_rng(3)
    checkpoints = sorted({max(1, keys * step // 10) for step in range(1, 11)})
    stored, put_seconds, since = 0, 0.0, 0
    try:
        for checkpoint in checkpoints:
            while stored < checkpoint:
                count = min(KEYS_PER_PUT, checkpoint - stored)
                batch = {key_text(stored + i): vectors[i] for i in range(count)}
                started = time.perf_counter()
                cache.put_many(batch)
                put_seconds += time.perf_counter() - started
                stored += count
            insert = put_seconds / (stored - since) * 1e6
            yield {
                "stored": stored,
                "insert_us": insert,
                "lookup_us": lookup_micros(cache, stored, rng),
                "miss_us": miss_micros(cache),
                "bytes": bytes_on_disk(path),
                "index_bytes": cache.index_bytes,
                "peak_mb": peak_rss_mb(),
            }
            put_seconds, since = 0.0, stored
    finally:
        cache.close()


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (VmHWM), in MB."""
    return peak_rss_kib() / 1024


def measure_keys(keys: int, tmp: Path) -> None:
    """Fill a cache with `keys` keys and print a line at each tenth, then a markdown table."""
    raw_per_key = KEY_DIMENSIONS * FLOAT_BYTES
    print(f"\nVectorCache: {keys:,} keys of {KEY_DIMENSIONS} float32, {KEYS_PER_PUT:,} a put_many", flush=True)
    header = (
        "| keys stored | insert µs/key (this tenth) | lookup µs/key (10,000 random) | miss µs/key (10,000 absent)"
        " | bytes on disk ÷ raw | in memory: bytes a key | peak RSS MB so far |"
    )
    lines = [header, "|" + " --- |" * (header.count("|") - 1)]
    started = time.perf_counter()
    for point in fill_cache(keys, tmp / "keys-cache"):
        ratio = point["bytes"] / (point["stored"] * raw_per_key)
        line = (
            f"| {point['stored']:,} | {point['insert_us']:.1f} | {point['lookup_us']:.1f} | {point['miss_us']:.1f}"
            f" | {ratio:.2f} | {point['index_bytes'] / point['stored']:.2f} | {point['peak_mb']:,.0f} |"
        )
        print(f"  {line}  ({time.perf_counter() - started:.0f} s)", flush=True)
        lines.append(line)
    from pipeline.cache.segments import DIGEST

    keys_alone = 1 + DIGEST / raw_per_key  # each vector's key: the least a cache of such small vectors takes
    print(
        f"  bytes on disk ÷ raw at the end: {ratio:.2f},"
        f" {ratio / keys_alone:.2f} × the vectors and their {DIGEST}-byte keys"
        f" (the target, ≤ 1.1, is the rows' cache's, of {DIMENSIONS} dimensions)"
    )
    print("\n" + "\n".join(lines))
    remove(tmp / "keys-cache")


# ---- the command line ---------------------------------------------------------------------------


def row_counts(text: str) -> list[int]:
    """ "1000000,10000000" -> [1000000, 10000000]; "1_000_000" is read too."""
    return [int(part.replace("_", "")) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=row_counts, help="comma-separated input sizes (default 1000000)")
    parser.add_argument("--keys", type=lambda text: row_counts(text)[0], help="fill a VectorCache with this many keys")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20,000 rows and 200,000 keys")
    parser.add_argument(
        "--partition-rows", type=int, help="source.partition_rows (default 1,000,000: 1M rows run one partition)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where inputs, outputs and caches go (a temp dir)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.keys = args.rows or [20_000], args.keys or 200_000
    elif args.rows is None and args.keys is None:
        args.rows = [1_000_000]
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    global PARTITION_ROWS
    PARTITION_ROWS = args.partition_rows
    sys.stdout.reconfigure(line_buffering=True)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="embedpipe-scale-", dir=args.workdir) as tmp:
        if args.rows:
            server = start_server()
            try:
                results = [measure_rows(rows, server, Path(tmp)) for rows in args.rows]
            finally:
                server.stop()
            report_rows(results)
        if args.keys:
            measure_keys(args.keys, Path(tmp))


if __name__ == "__main__":
    main()
