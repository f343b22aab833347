import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.incremental.unchanged_rows import _ends_apart
from pipeline.run.steps import run_pipeline
from tests.conftest import openai_config, write_parquet

OLD = ["alpha one", "beta two", None, "gamma three", "delta four"]


@pytest.mark.parametrize("new, reused, sent", [
    (OLD, 4, []),  # rewritten as it was: a new mtime, every vector kept
    (["alpha one", "beta 2", None, "gamma three", "delta four", "epsilon five"], 3, ["beta 2", "epsilon five"]),
    (["zeta", *OLD], 0, ["zeta"]),  # shifted by one row: nothing lines up, all else from the cache
    (OLD[:2], 2, []),
])
def test_a_rewritten_file_keeps_the_vectors_of_rows_that_did_not_change(tmp_path, fake_openai, new, reused, sent):
    source = write_parquet(tmp_path / "in" / "docs.parquet", {"id": list(range(len(OLD))), "text": OLD})
    config = openai_config(tmp_path, fake_openai, source)
    run_pipeline(config)
    fake_openai.calls.clear()
    write_parquet(source, {"id": list(range(len(new))), "text": new})
    stats = run_pipeline(config)["stats"]
    assert (stats["reused_rows"], stats["unchanged_rows"], sorted(fake_openai.calls)) == (reused, 0, sent)
    fresh = run_pipeline(openai_config(tmp_path, fake_openai, source, output__path=str(tmp_path / "fresh")))
    assert fresh["stats"]["reused_rows"] == 0
    assert pq.read_table(config.output.path).equals(pq.read_table(tmp_path / "fresh"))


@pytest.mark.parametrize("changed, reused", [("note", 3), ("title", 2)])
def test_a_template_row_is_reused_only_if_its_fields_are_unchanged(tmp_path, fake_openai, changed, reused):
    columns = {"id": [1, 2, 3], "title": ["a", "b", "c"], "body": ["x", "y", "z"], "note": ["n", "n", "n"]}
    source = write_parquet(tmp_path / "in.parquet", columns)
    config = openai_config(tmp_path, fake_openai, source, source__text_template="{title}: {body}")
    run_pipeline(config)
    write_parquet(source, {**columns, changed: ["changed", *columns[changed][1:]]})
    assert run_pipeline(config)["stats"]["reused_rows"] == reused


def test_row_group_partitions_each_compare_with_their_own_earlier_part(tmp_path, fake_openai):
    texts = [f"text number {i}" for i in range(40)]
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(40)), "text": texts}), source, row_group_size=10)
    config = openai_config(tmp_path, fake_openai, source, source__partition_rows=10)
    run_pipeline(config)
    fake_openai.calls.clear()
    texts[25] = "a new text"
    pq.write_table(pa.table({"id": list(range(40)), "text": texts}), source, row_group_size=10)
    stats = run_pipeline(config)["stats"]
    assert (stats["reused_rows"], list(fake_openai.calls)) == (39, ["a new text"])
    assert pq.read_table(config.output.path).column("text").to_pylist() == texts


@pytest.mark.parametrize("sizes, first, per_request, expected", [
    ([8192, 1808], 256, 256, [256, 512, 1024, 2048, 4096, 256, 1792, 16]),  # later batches as read, the final request apart
    ([8192, 100], 64, 64, [64, 128, 256, 512, 1024, 2048, 4096, 64, 64, 36]),
    ([3000], 256, 256, [256, 512, 1024, 1024, 184]),
    ([5000], 1024, 2048, [1024, 2048, 1928]),  # the final request is the whole last slice
    ([300], 256, 256, [256, 44]),
    ([10, 10], 64, 64, [10, 10]),
    ([0], 64, 64, [0]),
    ([], 64, 64, []),
])
@pytest.mark.parametrize("head_apart", [False, True])
def test_a_partition_s_first_batch_comes_in_doubling_slices_and_its_final_request_alone(sizes, first, per_request, expected, head_apart):
    ids = iter(range(sum(sizes)))
    batches = [pa.record_batch({"id": pa.array([next(ids) for _ in range(size)], pa.int64())}) for size in sizes]
    read_head = lambda: batches[0].slice(0, first) if head_apart and batches else None  # as a second reader of the same file would
    slices = list(_ends_apart(iter(batches), first, per_request, sum(sizes), read_head))
    assert [s.num_rows for s in slices] == expected
    assert [i for s in slices for i in s.column("id").to_pylist()] == list(range(sum(sizes)))


@pytest.mark.parametrize("sizes, total", [([100, 100], 100), ([100, 100], 500), ([100], 0)])
def test_a_wrong_row_count_still_hands_out_every_row_once_in_order(sizes, total):
    ids = iter(range(sum(sizes)))
    batches = [pa.record_batch({"id": pa.array([next(ids) for _ in range(size)], pa.int64())}) for size in sizes]
    slices = list(_ends_apart(iter(batches), 64, 64, total))
    assert [i for s in slices for i in s.column("id").to_pylist()] == list(range(sum(sizes)))


def test_only_the_run_s_first_request_is_cut_small_and_each_part_s_last_goes_alone(tmp_path, fake_openai):
    for name in ("a", "b"):
        write_parquet(tmp_path / "in" / f"{name}.parquet", {"id": [f"{name}{i}" for i in range(600)], "text": [f"{name} text {i}" for i in range(600)]})
    config = openai_config(tmp_path, fake_openai, tmp_path / "in", embedding__batch_size=256, embedding__max_concurrency=1, source__parallel_partitions=1)
    run_pipeline(config)
    requests = [len(inputs) for inputs in fake_openai.admitted_inputs]
    assert requests == [64, 128, 256, 152, 256, 256, 88]  # file a: doubling from 64; file b: from a whole request
    assert pq.read_table(config.output.path).column("id").to_pylist() == [f"{name}{i}" for name in "ab" for i in range(600)]
