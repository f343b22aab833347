import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import SourceError
from pipeline.run.backfill import hive_partitions, plan_backfill
from pipeline.run.steps import run_pipeline
from tests.conftest import openai_config


def hive(root, dates):
    for day in dates:
        (root / f"date={day}").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": [f"{day}-{i}" for i in range(3)], "text": [f"{day} note {i}" for i in range(3)]}), root / f"date={day}" / "part.parquet")


@pytest.mark.parametrize("start, end, expected", [
    (None, None, ["2026-01-01", "2026-01-02", "2026-01-03"]),
    ("2026-01-02", None, ["2026-01-02", "2026-01-03"]),
    (None, "2026-01-01", ["2026-01-01"]),
])
def test_partitions_are_chosen_by_range(tmp_path, start, end, expected):
    hive(tmp_path, ["2026-01-03", "2026-01-01", "2026-01-02"])
    (tmp_path / "notes").mkdir()
    assert [value for value, _ in hive_partitions(tmp_path, "date", start, end)] == expected


def test_no_partition_in_range_is_a_clear_error(tmp_path):
    hive(tmp_path, ["2026-01-01"])
    with pytest.raises(SourceError, match="no date=... directories between 2027-01-01"):
        hive_partitions(tmp_path, "date", "2027-01-01")


def test_a_backfill_from_an_object_store_says_what_works_instead():
    with pytest.raises(SourceError, match="reads date=... directories from a local path; object stores work with embedpipe run"):
        hive_partitions("s3://bucket/exports", "date")


def test_partitions_done_are_skipped_and_new_ones_run(tmp_path, fake_openai):
    hive(tmp_path / "in", ["2026-01-01", "2026-01-02"])
    config = openai_config(tmp_path, fake_openai, tmp_path / "in")
    todo, skipped = plan_backfill(config, "date", None, None)
    assert [v for v, _ in todo] == ["2026-01-01", "2026-01-02"] and skipped == []
    for _, partition in todo:
        run_pipeline(partition)
    assert pq.read_table(tmp_path / "out" / "date=2026-01-02" / "part-00000.parquet").num_rows == 3
    hive(tmp_path / "in", ["2026-01-03"])
    todo, skipped = plan_backfill(config, "date", None, None)
    assert [v for v, _ in todo] == ["2026-01-03"] and skipped == ["2026-01-01", "2026-01-02"]
