"""Inputs and outputs in S3, against a local S3 (moto's server) started by the tests."""

from __future__ import annotations

import io
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.downstream.similarity import read_output
from pipeline.errors import EmbedpipeError
from pipeline.remote import RemoteOutput
from pipeline.run.steps import run_pipeline
from tests.conftest import openai_config

TEXTS = [f"ticket {i}: the printer on floor {i % 7} is jammed again" for i in range(40)]


def put_parquet(fs, url: str, texts: list[str]) -> None:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), buffer, row_group_size=10)
    fs.pipe_file(url, buffer.getvalue())


def read_s3_output(fs, url: str) -> pa.Table:
    manifest = json.loads(fs.cat_file(f"{url}/_manifest.json"))
    return pa.concat_tables(pq.read_table(io.BytesIO(fs.cat_file(f"{url}/{f['name']}"))) for f in manifest["files"])


@pytest.mark.parametrize("source_path", ["in/docs.parquet", "in", "in/*.parquet"])
def test_a_run_reads_and_writes_s3_and_matches_a_local_run(tmp_path, s3, fake_openai, source_path):
    fs, bucket = s3
    put_parquet(fs, f"{bucket}/in/docs.parquet", TEXTS)
    config = openai_config(tmp_path, fake_openai, f"s3://{bucket}/{source_path}", output__path=f"s3://{bucket}/out", source__partition_rows=15)
    manifest = run_pipeline(config)
    table = read_s3_output(fs, f"{bucket}/out")
    pq.write_table(pa.table({"id": list(range(len(TEXTS))), "text": TEXTS}), tmp_path / "local.parquet")
    local = openai_config(tmp_path, fake_openai, tmp_path / "local.parquet", output__path=str(tmp_path / "local-out"))
    run_pipeline(local)
    assert table.sort_by("id").equals(pq.read_table(tmp_path / "local-out").sort_by("id"))
    assert manifest["output"] == f"s3://{bucket}/out" and manifest["rows"] == len(TEXTS)
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{bucket}/out")) == ["_manifest.json", *(f["name"] for f in manifest["files"])]


def test_a_bucket_directory_yields_every_file_a_format_reads_and_nothing_else(tmp_path, s3, fake_openai):
    fs, bucket = s3
    put_parquet(fs, f"{bucket}/in/a.parquet", TEXTS[:20])
    lines = [json.dumps({"id": 100 + i, "text": text}) for i, text in enumerate(TEXTS[20:])]
    fs.pipe_file(f"{bucket}/in/b.jsonl", "\n".join(lines).encode())
    fs.pipe_file(f"{bucket}/in/notes.txt", b"not an input")
    manifest = run_pipeline(openai_config(tmp_path, fake_openai, f"s3://{bucket}/in", output__path=f"s3://{bucket}/out"))
    assert [f["rows"] for f in manifest["files"]] == [20, 20]
    assert read_s3_output(fs, f"{bucket}/out").column("text").to_pylist() == TEXTS


def test_the_manifest_goes_up_last_and_parts_no_longer_listed_are_removed(tmp_path, s3, fake_openai, monkeypatch):
    fs, bucket = s3
    put_parquet(fs, f"{bucket}/in/docs.parquet", TEXTS)
    run_pipeline(openai_config(tmp_path, fake_openai, f"s3://{bucket}/in", output__path=f"s3://{bucket}/out", source__partition_rows=10))
    assert len(fs.glob(f"{bucket}/out/part-*.parquet")) == 4
    put_parquet(fs, f"{bucket}/in/docs.parquet", TEXTS[:15])  # fewer rows: fewer parts
    writes = []
    original = RemoteOutput.push

    def spy(self):  # records, in order, what reaches the bucket, and whether a manifest sat there then
        put, rm = self.fs.put_file, self.fs.rm_file
        self.fs.put_file = lambda src, dst, **kw: (writes.append(("put", dst.rsplit("/", 1)[-1], fs.exists(f"{bucket}/out/_manifest.json"))), put(src, dst, **kw))
        self.fs.rm_file = lambda path, **kw: (writes.append(("rm", path.rsplit("/", 1)[-1], None)), rm(path, **kw))
        return original(self)

    monkeypatch.setattr(RemoteOutput, "push", spy)
    run_pipeline(openai_config(tmp_path, fake_openai, f"s3://{bucket}/in", output__path=f"s3://{bucket}/out", source__partition_rows=10))
    assert writes[0] == ("rm", "_manifest.json", None)
    assert writes[-1][:2] == ("put", "_manifest.json")
    assert all(manifest_there is False for op, _, manifest_there in writes[1:-1] if op == "put")
    assert {name for op, name, _ in writes if op == "rm"} == {"_manifest.json", "part-00002.parquet", "part-00003.parquet"}
    assert read_s3_output(fs, f"{bucket}/out").num_rows == 15


def test_a_run_on_a_fresh_machine_reuses_the_output_in_the_bucket(tmp_path, s3, fake_openai):
    fs, bucket = s3
    put_parquet(fs, f"{bucket}/in/docs.parquet", TEXTS)
    config = openai_config(tmp_path, fake_openai, f"s3://{bucket}/in", output__path=f"s3://{bucket}/out")
    run_pipeline(config)
    requests = fake_openai.requests
    shutil.rmtree(tmp_path / "cache")  # a fresh machine: no vector cache, no mirror, only the bucket
    stats = run_pipeline(config)["stats"]
    assert fake_openai.requests == requests
    assert stats["unchanged_rows"] == len(TEXTS)  # the fetched input is as it was: its part kept whole
    put_parquet(fs, f"{bucket}/in/docs.parquet", [*TEXTS[:-1], "a brand new ticket"])
    stats = run_pipeline(config)["stats"]
    assert (fake_openai.calls["a brand new ticket"], stats["embedded_chunks"]) == (1, 1)
    assert read_s3_output(fs, f"{bucket}/out").num_rows == len(TEXTS)
    assert len(read_output(f"s3://{bucket}/out").vectors) == len(TEXTS)  # what similar, neighbours and cluster read


@pytest.mark.parametrize("path, message", [
    ("s3://{bucket}/nothing-here/*.parquet", "no .csv, .jsonl, .ndjson or .parquet files found"),
    ("s3://no-such-bucket-anywhere/in.parquet", "no .csv, .jsonl, .ndjson or .parquet files found|cannot fetch it"),
    ("nosuchscheme://x/in.parquet", "nosuchscheme"),
    ("s3://{bucket}/in.parquet", None),  # a good source, an output bucket that does not exist
])
def test_a_bad_remote_source_is_one_line(tmp_path, s3, fake_openai, path, message):
    fs, bucket = s3
    put_parquet(fs, f"{bucket}/in.parquet", TEXTS)
    output = f"s3://{bucket}/out" if message else "s3://no-such-bucket-anywhere/out"
    config = openai_config(tmp_path, fake_openai, path.format(bucket=bucket), output__path=output)
    with pytest.raises(EmbedpipeError, match=message or "output.path s3://no-such-bucket-anywhere/out: cannot write there") as error:
        run_pipeline(config)
    assert "\n" not in str(error.value) and fake_openai.requests == 0
