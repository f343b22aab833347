"""Scheduled runs over a growing input: only new or changed texts are embedded, only the
affected parts rewritten, and unchanged files are recognised without reading their text."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.run.steps import run_pipeline
from pipeline.sources import partitions, reader
from tests.conftest import openai_config
from tests.fakes.openai_server import fake_vector


def write(path, ids, texts):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids, "text": texts}), path)


def inode(path):
    return os.stat(path).st_ino


@pytest.fixture
def dataset(tmp_path):
    write(tmp_path / "in" / "2026-01.parquet", ["a1", "a2"], ["alpha one", "alpha two"])
    write(tmp_path / "in" / "2026-03.parquet", ["c1", "c2"], ["gamma one", "gamma two"])
    return tmp_path / "in"


def test_a_new_file_is_embedded_alone_and_the_other_parts_are_kept(tmp_path, fake_openai, dataset):
    config = openai_config(tmp_path, fake_openai, dataset)
    run_pipeline(config)
    kept = {name: inode(tmp_path / "out" / name) for name in ("part-00000.parquet", "part-00001.parquet")}
    write(dataset / "2026-02.parquet", ["b1"], ["beta one"])  # lands between the two
    sent_before = sum(fake_openai.calls.values())
    manifest = run_pipeline(config)
    assert sum(fake_openai.calls.values()) - sent_before == 1 and fake_openai.calls["beta one"] == 1
    assert manifest["stats"]["unchanged_rows"] == 4
    assert inode(tmp_path / "out" / "part-00000.parquet") == kept["part-00000.parquet"], "not rewritten"
    assert inode(tmp_path / "out" / "part-00002.parquet") == kept["part-00001.parquet"], "renumbered, not rewritten"
    table = pq.read_table(tmp_path / "out")
    assert table.column("id").to_pylist() == ["a1", "a2", "b1", "c1", "c2"]


def test_changed_rows_are_embedded_and_only_their_part_rewritten(tmp_path, fake_openai, dataset):
    config = openai_config(tmp_path, fake_openai, dataset)
    run_pipeline(config)
    untouched = inode(tmp_path / "out" / "part-00001.parquet")
    write(dataset / "2026-01.parquet", ["a1", "a2", "a3"], ["alpha one", "alpha two, edited", "alpha three"])
    sent_before = sum(fake_openai.calls.values())
    manifest = run_pipeline(config)
    assert sum(fake_openai.calls.values()) - sent_before == 2, "only the edited and the new text"
    assert inode(tmp_path / "out" / "part-00001.parquet") == untouched
    assert manifest["stats"]["unchanged_rows"] == 2 and manifest["rows"] == 5
    vectors = pq.read_table(tmp_path / "out" / "part-00000.parquet").column("embedding").to_pylist()
    np.testing.assert_allclose(vectors[1], fake_vector("alpha two, edited", 16), atol=1e-6)


def test_unchanged_files_are_recognised_without_reading_their_text(tmp_path, fake_openai, dataset, monkeypatch):
    config = openai_config(tmp_path, fake_openai, dataset)
    run_pipeline(config)
    reads = []
    real = reader.read_batches
    monkeypatch.setattr(reader, "read_batches", lambda file, columns=None, **kw: (reads.append((file.name, columns)), real(file, columns, **kw))[1])
    monkeypatch.setattr(partitions, "read_batches", reader.read_batches)
    run_pipeline(config)
    assert reads and all(columns == ["id"] for _, columns in reads), reads


def test_other_settings_reuse_nothing(tmp_path, fake_openai, dataset):
    config = openai_config(tmp_path, fake_openai, dataset)
    run_pipeline(config)
    config.embedding.dimensions = 8
    manifest = run_pipeline(config)
    assert manifest["stats"]["unchanged_rows"] == 0 and manifest["dimensions"] == 8


@pytest.mark.parametrize(
    ("before", "after", "same"),
    [("auto", "auto", True), ("auto", "static", False), ("torch", "onnx-int8", False), ("onnx", "onnx", True)],
)
def test_an_output_of_another_local_backend_is_not_reused(tmp_path, before, after, same):
    from pipeline.config import Config
    from pipeline.incremental.unchanged_files import settings_key

    def key(backend: str) -> str:
        raw = {"source": {"path": str(tmp_path / "x.parquet")}, "embedding": {"provider": "local", "backend": backend}}
        return settings_key(Config.model_validate(raw))

    assert (key(before) == key(after)) is same
