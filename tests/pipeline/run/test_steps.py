"""The whole pipeline against the loopback OpenAI server: what a user would check in the output."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import EmbedpipeError, ProviderError
from pipeline.run.steps import run_pipeline
from pipeline.text.normalise import normalise_text
from tests.chunking_text import long_prose
from tests.conftest import openai_config, write_parquet
from tests.fakes.openai_server import FakeOpenAI, fake_vector

TEXTS = ["The cat sat.", "  The   cat\nsat. ", None, "", "   \t", "A dog barked.", "cafe\u0301 au lait"]


@pytest.fixture
def source(tmp_path):
    return write_parquet(tmp_path / "in" / "docs.parquet", {"id": [10, 11, 12, 13, 14, 15, 16], "text": TEXTS, "extra": list("abcdefg")})


def read_output(config):
    return pq.read_table(config.output.path)


def test_every_row_comes_back_once_in_order_with_its_columns(tmp_path, fake_openai, source):
    config = openai_config(tmp_path, fake_openai, source)
    manifest = run_pipeline(config)
    table = read_output(config)
    assert table.column("id").to_pylist() == [10, 11, 12, 13, 14, 15, 16]
    assert table.column("extra").to_pylist() == list("abcdefg")
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), fake_openai.dimensions)
    assert manifest["rows"] == 7 and [(f["name"], f["rows"]) for f in manifest["files"]] == [("part-00000.parquet", 7)]


def test_each_vector_is_the_servers_vector_for_its_normalised_text(tmp_path, fake_openai, source):
    config = openai_config(tmp_path, fake_openai, source)
    run_pipeline(config)
    for text, vector in zip(TEXTS, read_output(config).column("embedding").to_pylist()):
        if normalise_text(text):
            np.testing.assert_allclose(vector, fake_vector(normalise_text(text), fake_openai.dimensions), atol=1e-6)


def test_blank_texts_get_null_vectors_and_cost_nothing(tmp_path, fake_openai, source):
    config = openai_config(tmp_path, fake_openai, source)
    manifest = run_pipeline(config)
    vectors = read_output(config).column("embedding")
    assert [v.is_valid for v in vectors] == [True, True, False, False, False, True, True]
    assert "" not in fake_openai.calls and manifest["stats"]["null_texts"] == 3


def test_duplicates_are_embedded_once_and_a_second_run_makes_no_call(tmp_path, fake_openai, source):
    config = openai_config(tmp_path, fake_openai, source)
    first = run_pipeline(config)["stats"]
    assert fake_openai.calls["The cat sat."] == 1 and first["distinct_texts"] == 3
    requests = fake_openai.requests
    second = run_pipeline(config)["stats"]
    assert fake_openai.requests == requests
    assert (second["requests"], second["unchanged_rows"]) == (0, 7)  # the input did not change
    elsewhere = openai_config(tmp_path, fake_openai, source, output__path=str(tmp_path / "elsewhere"))
    third = run_pipeline(elsewhere)["stats"]  # no earlier output to reuse: every chunk from the cache
    assert (third["requests"], third["cache_hits"], third["unchanged_rows"]) == (0, 3, 0)


def test_a_text_in_a_later_batch_is_paid_once_though_that_batch_was_looked_up_ahead(tmp_path):
    # The second batch is read, chunked and looked up in the cache while the first one's
    # request is still in flight: the shared text is a miss then, found when it is sent, and counted once, as sent.
    texts = ["shared text"] + [f"row {i}" for i in range(1, 3_000)] + ["shared text"]
    source = write_parquet(tmp_path / "in.parquet", {"id": list(range(len(texts))), "text": texts})
    with FakeOpenAI(latency=0.3) as server:
        stats = run_pipeline(openai_config(tmp_path, server, source))["stats"]
    assert server.calls["shared text"] == 1
    assert (stats["chunks"], stats["embedded_chunks"], stats["cache_hits"]) == (3_000, 3_000, 0)


def test_a_100k_token_text_is_chunked_and_never_rejected(tmp_path, fake_openai):
    text = long_prose(tokens=100_000)
    source = write_parquet(tmp_path / "in.parquet", {"id": [1, 2], "text": [text, "short"]})
    config = openai_config(tmp_path, fake_openai, source, chunking__max_tokens=8192)
    manifest = run_pipeline(config)
    assert fake_openai.rejected == []
    assert manifest["stats"]["chunks"] >= 13
    vector = np.array(read_output(config).column("embedding")[0].as_py())
    assert abs(np.linalg.norm(vector) - 1) < 1e-5


def test_chunked_row_vector_is_the_token_weighted_mean(tmp_path, fake_openai):
    text = long_prose(tokens=3_000)
    source = write_parquet(tmp_path / "in.parquet", {"id": [1], "text": [text]})
    config = openai_config(tmp_path, fake_openai, source, chunking__max_tokens=1000, output__chunks_path=str(tmp_path / "chunks"))
    run_pipeline(config)
    chunks = pq.read_table(tmp_path / "chunks").to_pylist()
    assert [c["chunk_index"] for c in chunks] == list(range(len(chunks))) and len(chunks) >= 3
    assert all(normalise_text(text)[c["char_start"] : c["char_end"]] == c["text"] for c in chunks)
    mean = sum(c["token_count"] * np.array(c["vector"]) for c in chunks)
    np.testing.assert_allclose(read_output(config).column("embedding")[0].as_py(), mean / np.linalg.norm(mean), atol=1e-5)


def test_parquet_metadata_records_how_vectors_were_made_and_no_secret(tmp_path, fake_openai, source, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-do-not-leak")
    config = openai_config(tmp_path, fake_openai, source)
    run_pipeline(config, api_key="sk-secret-do-not-leak")
    meta = json.loads(pq.read_schema(tmp_path / "out" / "part-00000.parquet").metadata[b"embedpipe"])
    assert (meta["provider"], meta["model"], meta["dimensions"]) == ("openai", "text-embedding-3-small", 16)
    assert meta["chunking"]["max_tokens"] == 512 and meta["pipeline_version"]
    written = b"".join(p.read_bytes() for p in (tmp_path / "out").iterdir())
    assert b"sk-secret" not in written


def test_a_failed_run_publishes_nothing_and_leaves_the_last_output(tmp_path, fake_openai, source):
    config = openai_config(tmp_path, fake_openai, source)
    run_pipeline(config)
    visible = lambda: sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith("."))
    before = visible()
    config.embedding.model = "text-embedding-unknown"
    with pytest.raises(ProviderError, match="not found"):
        run_pipeline(config.model_copy(update={"cache": config.cache.model_copy(update={"path": str(tmp_path / "c2")})}))
    assert visible() == before  # the hidden staging directory keeps what a rerun can resume from


def test_many_files_become_parts_in_input_order(tmp_path, fake_openai):
    for i in range(3):
        write_parquet(tmp_path / "in" / f"{i}.parquet", {"id": [i * 2, i * 2 + 1], "text": [f"text {i}a", f"text {i}b"]})
    (tmp_path / "in" / "3.csv").write_text("id,text\n6,text 3a\n7,text 3b\n")
    config = openai_config(tmp_path, fake_openai, tmp_path / "in")
    config.source.path = str(tmp_path / "in" / "*.parquet")
    manifest = run_pipeline(config)
    assert [f["name"] for f in manifest["files"]] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert read_output(config).column("id").to_pylist() == list(range(6))


def test_rerun_with_fewer_files_removes_stale_parts(tmp_path, fake_openai):
    for i in range(2):
        write_parquet(tmp_path / "in" / f"{i}.parquet", {"id": [i], "text": [f"t{i}"]})
    config = openai_config(tmp_path, fake_openai, tmp_path / "in")
    run_pipeline(config)
    (tmp_path / "in" / "1.parquet").unlink()
    run_pipeline(config)
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == ["_manifest.json", "part-00000.parquet"]


def test_missing_api_key_is_a_clear_error(tmp_path, fake_openai, source):
    config = openai_config(tmp_path, fake_openai, source)
    config.embedding.base_url = None  # the real API needs a key; a self-hosted server may not
    with pytest.raises(EmbedpipeError, match="set the environment variable OPENAI_API_KEY"):
        run_pipeline(config, api_key=None)


def test_a_second_run_on_the_same_output_is_refused_while_the_first_writes(tmp_path, fake_openai, source):
    from pipeline.run.steps import close_run, prepare_run

    config = openai_config(tmp_path, fake_openai, source)
    first = prepare_run(config)
    with pytest.raises(EmbedpipeError, match="another embedpipe run is writing it"):
        prepare_run(config)
    close_run(first)
    close_run(prepare_run(config))  # free again


class SendingEmbedder:
    """Stands in for the embedder: notes when a partition's reader waits for its first request."""

    def __init__(self, events: list[str]):
        self.events = events

    def wait_for_first_request(self, timeout: float) -> None:
        self.events.append("waited for the first request")


@pytest.mark.parametrize("first_misses, expected", [
    ({"a text the cache lacks": 4}, ["read 1", "waited for the first request", "read 2", "read 3"]),
    ({}, ["read 1", "read 2", "read 3"]),  # the first rows were all cached: no request to wait for
])
def test_the_second_rows_are_read_once_the_first_request_is_on_the_wire(first_misses, expected):
    from pipeline.run.embed import PreparedRows
    from pipeline.run.steps import _first_request_first

    events: list[str] = []

    def batches():
        for i in range(1, 4):
            events.append(f"read {i}")
            yield None, None, PreparedRows([], misses=first_misses if i == 1 else {"more": 1})

    assert len(list(_first_request_first(batches(), SendingEmbedder(events)))) == 3
    assert events == expected


# Run in a fresh interpreter: prints whether pandas was imported when the server saw the first request.
FIRST_REQUEST = """
import json
import sys
from pathlib import Path

from pipeline.run.steps import run_pipeline
from tests.conftest import openai_config
from tests.fakes.openai_server import FakeOpenAI


class Server(FakeOpenAI):
    def answer(self, body):
        if not self.requests:
            print("pandas imported:", "pandas" in sys.modules)
        return super().answer(body)


with Server() as server:
    run_pipeline(openai_config(Path(sys.argv[1]), server, Path(sys.argv[2]), **json.loads(sys.argv[3])))
"""


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"source__text_column": None, "source__text_template": "{text} ({extra})"},
        {"chunking__max_tokens": 8, "chunking__overlap_tokens": 0},  # texts of several chunks
    ],
)
def test_a_run_has_not_imported_pandas_when_its_first_request_leaves(tmp_path, source, overrides):
    # pyarrow imports pandas (0.2 s) the first time `pa.array` converts a Python list.
    ran = subprocess.run([sys.executable, "-c", FIRST_REQUEST, str(tmp_path), str(source), json.dumps(overrides)],
                         cwd=Path(__file__).parents[3], capture_output=True, text=True, timeout=60)
    assert ran.stdout.splitlines() == ["pandas imported: False"], ran.stderr


# Run in a fresh interpreter: the config's run, then whether `openai` was imported and the texts sent.
IMPORTED = """
import sys

from pipeline.config import Config
from pipeline.run.steps import run_pipeline

manifest = run_pipeline(Config.model_validate_json(sys.argv[1]))
print("openai imported:", "openai" in sys.modules, "sent:", manifest["stats"]["embedded_chunks"])
"""


@pytest.mark.parametrize(
    ("new_texts", "expected"),
    [([], "openai imported: False sent: 0"), (["A bird sang."], "openai imported: True sent: 1")],
)
def test_a_run_that_finds_every_text_cached_never_imports_openai(tmp_path, fake_openai, new_texts, expected):
    # Importing the `openai` package takes half a second of the interpreter, a third of a cached run's.
    texts = ["The cat sat.", "A dog barked."]
    first = write_parquet(tmp_path / "in" / "a.parquet", {"id": [1, 2], "text": texts})
    run_pipeline(openai_config(tmp_path, fake_openai, first))
    again = write_parquet(tmp_path / "again" / "b.parquet", {"id": [1, 2, 3][: len(texts + new_texts)], "text": texts + new_texts})
    config = openai_config(tmp_path, fake_openai, again, output__path=str(tmp_path / "out-again"))
    ran = subprocess.run([sys.executable, "-c", IMPORTED, config.model_dump_json()],
                         cwd=Path(__file__).parents[3], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "OPENAI_API_KEY": "sk-test"})
    assert ran.stdout.splitlines()[-1:] == [expected], ran.stderr
