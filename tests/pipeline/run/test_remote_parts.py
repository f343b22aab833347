"""Cluster workers on hosts that share no disk with the flow: input from the bucket, parts staged
through it. Each host is a working directory of its own (the cache path is relative)."""

import io
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import EmbedpipeError
from pipeline.run.remote_parts import collect_parts
from pipeline.run.steps import close_run, finish_run, prepare_run
from pipeline.run.workers import absorb, embed_partition_in_worker, kept_by_the_flow, run_spec
from tests.conftest import openai_config
from tests.pipeline.test_remote import read_s3_output

TEXTS = [f"ticket {i}: the printer on floor {i % 7} is jammed again" for i in range(30)]


def put_parquet(fs, url: str, texts: list[str], first_id: int) -> None:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": list(range(first_id, first_id + len(texts))), "text": texts}), buffer)
    fs.pipe_file(url, buffer.getvalue())


def on_host(monkeypatch, tmp_path, name: str):
    (tmp_path / name).mkdir(exist_ok=True)
    monkeypatch.chdir(tmp_path / name)


def prepared(tmp_path, s3, fake_openai, monkeypatch):
    """A run prepared on the flow's host: input in two files in the bucket, output there too."""
    fs, bucket = s3
    put_parquet(fs, f"{bucket}/in/a.parquet", TEXTS[:15], 0)
    put_parquet(fs, f"{bucket}/in/b.parquet", TEXTS[15:], 15)
    on_host(monkeypatch, tmp_path, "flow")
    config = openai_config(
        tmp_path, fake_openai, f"s3://{bucket}/in", output__path=f"s3://{bucket}/out", cache__path=".embedpipe/cache"
    )
    run = prepare_run(config)
    return run, pickle.loads(pickle.dumps(run_spec(run, 2)))  # as it travels to a worker


def on_the_cluster(tmp_path, run, spec, monkeypatch) -> dict:
    """What the Dask path does: unchanged partitions kept by the flow, the others each on a host of
    its own; the workers' parts collected, the output published. The manifest."""
    parts = kept_by_the_flow(run)
    for index in (i for i in range(len(spec.partitions)) if i not in parts):
        on_host(monkeypatch, tmp_path, f"host-{index}")
        result = embed_partition_in_worker(spec, index, None)
        assert not (tmp_path / f"host-{index}" / spec.partitions[1 - index].file).exists()  # its own input only
        on_host(monkeypatch, tmp_path, "flow")
        parts[index] = absorb(run, result)
    collect_parts(spec.remote, [run.output.chunks, run.output.rows], parts)
    return finish_run(run, parts)


def test_workers_on_other_hosts_fetch_their_input_and_the_flow_publishes_their_parts(
    tmp_path, s3, fake_openai, monkeypatch
):
    fs, bucket = s3
    manifest = on_the_cluster(tmp_path, *prepared(tmp_path, s3, fake_openai, monkeypatch), monkeypatch)
    assert manifest["rows"] == len(TEXTS) and fake_openai.requests == 2
    table = read_s3_output(fs, f"{bucket}/out")
    assert table.column("text").to_pylist() == TEXTS and table.column("embedding").null_count == 0
    assert not fs.glob(f"{bucket}/out/.staging-*")  # published: the staged parts are gone from the bucket
    again = on_the_cluster(tmp_path, *prepared(tmp_path, s3, fake_openai, monkeypatch), monkeypatch)
    assert again["stats"]["unchanged_rows"] == len(TEXTS) and fake_openai.requests == 2  # kept by the flow
    assert read_s3_output(fs, f"{bucket}/out").equals(table)


@pytest.mark.parametrize("fault, expected", [
    ("the part was uploaded by a worker that died before it reported", None),
    ("the input changed in the bucket during the run", "a.parquet changed in the bucket during the run; run again"),
])  # fmt: skip
def test_a_partition_run_again_on_another_host(tmp_path, s3, fake_openai, monkeypatch, fault, expected):
    fs, bucket = s3
    run, spec = prepared(tmp_path, s3, fake_openai, monkeypatch)
    on_host(monkeypatch, tmp_path, "host-a")
    first = embed_partition_in_worker(spec, 0, None)
    if "changed" in fault:
        put_parquet(fs, f"{bucket}/in/a.parquet", [*TEXTS[:14], "a new ticket"], 0)
    requests = fake_openai.requests
    on_host(monkeypatch, tmp_path, "host-b")
    try:
        if expected is None:
            again = embed_partition_in_worker(spec, 0, None)
            assert (again.rows, fake_openai.requests) == (first.rows, requests)  # fetched from the bucket, not paid
        else:
            with pytest.raises(EmbedpipeError, match=expected):
                embed_partition_in_worker(spec, 0, None)
            assert fake_openai.requests == requests
    finally:
        on_host(monkeypatch, tmp_path, "flow")
        close_run(run)


def test_a_staged_part_is_one_object_seen_whole(tmp_path, s3, fake_openai, monkeypatch):
    fs, bucket = s3
    run, spec = prepared(tmp_path, s3, fake_openai, monkeypatch)
    on_host(monkeypatch, tmp_path, "host-a")
    embed_partition_in_worker(spec, 0, None)
    staged = fs.find(f"{bucket}/out/.staging-{spec.run_key}")
    assert [path.rsplit("/", 1)[-1] for path in staged] == ["part-00000.parquet"]  # no temporary name ever goes up
    assert pa.BufferReader(fs.cat_file(staged[0])).size() > 0
    on_host(monkeypatch, tmp_path, "flow")
    close_run(run)
