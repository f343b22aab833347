"""The scale benchmark's input, its key-by-key cache fill at a tiny size, and its report's
arithmetic. Nothing here is timed."""

from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

from benchmarks.scale import (
    DUPLICATE_SHARE,
    WORDS,
    fill_cache,
    input_batches,
    parse_args,
    rows_table,
    scaling,
    text_indices,
    verdict,
    write_input,
)


def test_the_input_has_short_texts_and_about_a_third_of_rows_copies_spread_across_batches(tmp_path):
    path = tmp_path / "input.parquet"
    write_input(path, 40_000)
    table = pq.read_table(path)
    texts = table.column("text").to_pylist()
    assert table.column("id").to_pylist() == list(range(40_000))
    assert all(WORDS[0] <= len(text.split()) <= WORDS[1] for text in texts)
    assert 1 - len(set(texts)) / len(texts) == pytest.approx(DUPLICATE_SHARE, abs=0.01)
    first_batch = {}  # text -> the 8,192-row record batch (the pipeline's) where it first appears
    for row, text in enumerate(texts):
        first_batch.setdefault(text, row // 8_192)
    copies_elsewhere = sum(first_batch[text] != row // 8_192 for row, text in enumerate(texts))
    assert copies_elsewhere > 0.5 * (len(texts) - len(first_batch))


def test_the_input_is_the_same_every_time_and_streams_in_chunks():
    first, again = list(input_batches(300_000)), list(input_batches(300_000))
    assert len(first) == 2 and first[0].num_rows + first[1].num_rows == 300_000
    assert first[1].column("text").to_pylist() == again[1].column("text").to_pylist()


def test_a_row_copies_only_a_text_already_used():
    indices, distinct = text_indices(np.random.default_rng(0), 10_000, 0)
    assert indices[0] == 0
    assert all(index <= max_so_far + 1 for index, max_so_far in zip(indices[1:], np.maximum.accumulate(indices)))
    assert distinct == len(set(indices.tolist())) == max(indices) + 1
    assert max(Counter(indices.tolist()).values()) > 1


def test_filling_a_cache_reports_each_tenth_with_every_looked_up_key_found(tmp_path):
    points = list(fill_cache(5_000, tmp_path / "cache"))
    assert [p["stored"] for p in points] == list(range(500, 5_001, 500))
    assert all(p["insert_us"] > 0 and p["lookup_us"] > 0 for p in points)
    assert points[-1]["bytes"] > points[-1]["stored"] * 16 * 4  # at least the raw vectors
    assert 0 < points[-1]["index_bytes"] < points[-1]["stored"] * 8  # the keys' top bits and filters, not whole keys


def result(rows, cold, cached, peak_mb):
    return {
        "rows": rows,
        "distinct": rows * 7 // 10,
        "cold_seconds": cold,
        "cold_cpu": cold,
        "server_cpu": 1.0,
        "cached_seconds": cached,
        "floor_seconds": 1.0,
        "floor_without_text_seconds": 0.5,
        "cached_ratio": cached / 1.0,
        "cached_ratio_without_text": cached / 0.5,
        "peak_mb": peak_mb,
        "cached_peak_mb": peak_mb,
        "cache_bytes": rows * 7 // 10 * 256 * 2,
        "raw_bytes": rows * 7 // 10 * 256,
    }


def test_the_table_and_the_scaling_ratios():
    small, large = result(1_000_000, 20.0, 2.0, 500.0), result(10_000_000, 240.0, 20.0, 600.0)
    header, rule, *lines = rows_table([small, large]).splitlines()
    assert rule.count("---") == header.count("|") - 1
    expected = "| 1,000,000 | 700,000 | 20.0 | 50,000 | 20.0, 1.0 | 2.0 | 1.00 (0.50) | 2.0 (4.0) | 500 (500) | 2.00 |"
    assert lines[0] == expected
    ratios = scaling(small, large)
    assert ratios["per-row cost ratio"] == pytest.approx(1.2)
    assert ratios["cached per-row cost ratio"] == pytest.approx(1.0)
    assert ratios["RSS ratio"] == pytest.approx(1.2)
    assert verdict("per-row cost ratio", 1.2).endswith("NOT met") and verdict("RSS ratio", 1.1).endswith(": met")


def test_quick_runs_both_modes_small_and_keys_alone_runs_no_rows():
    quick = parse_args(["--quick"])
    assert (quick.rows, quick.keys) == ([20_000], 200_000)
    assert parse_args([]).rows == [1_000_000]
    assert parse_args(["--rows", "1000000,10_000_000"]).rows == [1_000_000, 10_000_000]
    assert (parse_args(["--keys", "100000000"]).rows, parse_args(["--keys", "100000000"]).keys) == (None, 100_000_000)
