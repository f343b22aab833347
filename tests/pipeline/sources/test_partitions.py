"""Partitions, and a run killed at several points then started again."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv  # noqa: F401  pa.csv
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.run.steps import run_pipeline
from pipeline.sources.partitions import plan_partitions
from pipeline.sources.reader import SourcePlan
from tests.conftest import openai_config
from tests.fakes.openai_server import FakeOpenAI, fake_vector

ROOT = Path(__file__).parents[2]


def test_a_large_parquet_file_is_split_at_row_groups_and_keeps_row_order(tmp_path, fake_openai):
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"id": list(range(1000)), "text": [f"row {i}" for i in range(1000)]}), path, row_group_size=100)
    partitions = plan_partitions(SourcePlan([path], [1000]), rows_per_partition=250)
    assert [p.rows for p in partitions] == [300, 300, 300, 100]
    config = openai_config(tmp_path, fake_openai, path, source__partition_rows=250, source__parallel_partitions=3)
    manifest = run_pipeline(config)
    assert [f["rows"] for f in manifest["files"]] == [300, 300, 300, 100]
    table = pq.read_table(tmp_path / "out")
    assert table.column("id").to_pylist() == list(range(1000))


WRITERS = {
    ".parquet": lambda table, path: pq.write_table(table, path, row_group_size=100),
    ".csv": lambda table, path: pa.csv.write_csv(table, path),
    ".jsonl": lambda table, path: path.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist())),
}


@pytest.mark.parametrize("suffix, index, head", [
    (".parquet", 1, [300, 301, 302]),  # the second partition: row groups 3-5
    (".csv", 0, None),  # a CSV reader hands out blocks of bytes: no head apart
    (".jsonl", 0, None),  # so does a JSON Lines reader
])
def test_a_partition_s_head_is_its_own_first_rows(tmp_path, suffix, index, head):
    path = tmp_path / f"big{suffix}"
    table = pa.table({"id": list(range(1000)), "text": [f"row {i}" for i in range(1000)]})
    WRITERS[suffix](table, path)
    partitions = plan_partitions(SourcePlan([path], [1000]), rows_per_partition=250)
    assert len(partitions) == (4 if suffix == ".parquet" else 1)  # only Parquet is cut at row groups
    found = partitions[index].read_head(3)
    assert (found.column("id").to_pylist() if found is not None else None) == head


def test_a_text_shared_by_concurrent_partitions_is_paid_once(tmp_path, fake_openai):
    source = tmp_path / "in"
    source.mkdir()
    for i in range(4):
        table = pa.table({"id": [f"{i}-{j}" for j in range(50)], "text": [f"shared {j}" for j in range(50)]})
        pq.write_table(table, source / f"{i}.parquet")
    config = openai_config(tmp_path, fake_openai, source, source__parallel_partitions=4)
    run_pipeline(config)
    assert max(fake_openai.calls.values()) == 1


@pytest.fixture
def slow_server():
    with FakeOpenAI(latency=0.05) as server:
        yield server


@pytest.mark.parametrize("kill_after_requests", [3, 30, 55])
def test_a_run_killed_at_any_point_finishes_when_started_again(tmp_path, slow_server, kill_after_requests):
    texts = {f"{i}.parquet": [f"file {i} row {j} says something" for j in range(200)] for i in range(6)}
    (tmp_path / "in").mkdir()
    for name, rows in texts.items():
        pq.write_table(pa.table({"id": [f"{name}-{j}" for j in range(200)], "text": rows}), tmp_path / "in" / name)
    config = openai_config(tmp_path, slow_server, tmp_path / "in", embedding__batch_size=20, embedding__max_concurrency=2, source__parallel_partitions=2)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config.model_dump()))
    script = "import sys; from pipeline.config import load_config; from pipeline.run.steps import run_pipeline; run_pipeline(load_config(sys.argv[1]))"
    process = subprocess.Popen([sys.executable, "-c", script, str(path)], cwd=ROOT)
    deadline = time.monotonic() + 60
    while slow_server.requests < kill_after_requests and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.005)
    process.kill()
    process.wait()
    visible = [p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")] if (tmp_path / "out").exists() else []
    assert visible == [], "nothing partial is visible"

    manifest = run_pipeline(config)
    table = pq.read_table(tmp_path / "out")
    all_texts = [t for rows in texts.values() for t in rows]
    assert table.num_rows == 1200 and len(manifest["files"]) == 6
    np.testing.assert_allclose(np.array(table.column("embedding").to_pylist()), np.stack([fake_vector(t, 16) for t in all_texts]), atol=1e-6)
    paid_again = sum(n - 1 for n in slow_server.calls.values())
    assert paid_again <= 2 * 2 * 20, "at most the requests in flight are paid again"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".lock", "_manifest.json"] + [f"part-{i:05d}.parquet" for i in range(6)]


@pytest.mark.parametrize("count, expected", [(2, ["a b", "c"]), (10, ["a b", "c", "d", "e"])])
def test_the_first_texts_of_the_input_skip_blanks_and_cross_files(tmp_path, count, expected):
    from pipeline.config import SourceConfig
    from pipeline.sources.partitions import first_texts
    from pipeline.sources.reader import validate_source

    pq.write_table(pa.table({"id": [1, 2, 3], "text": ["a   b", None, "  "]}), tmp_path / "1.parquet")
    pq.write_table(pa.table({"id": [4, 5, 6], "text": ["c", "d", "e"]}), tmp_path / "2.parquet")
    config = SourceConfig(path=str(tmp_path))
    assert first_texts(validate_source(config), config, count) == expected
