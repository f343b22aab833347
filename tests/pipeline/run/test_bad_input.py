"""Every bad input the operator-experience issue lists: a clear one-line error before any
call, or a counted skip, and never a lost row."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.errors import EmbedpipeError
from pipeline.run.estimate import estimate_config
from pipeline.run.steps import run_pipeline
from tests.conftest import openai_config, write_parquet


def _parquet(columns):
    return lambda tmp: write_parquet(tmp / "in.parquet", columns)


def _csv(body: bytes):
    def make(tmp):
        (tmp / "in.csv").write_bytes(body)
        return tmp / "in.csv"
    return make


def _truncated(tmp):
    path = write_parquet(tmp / "in.parquet", {"id": list(range(100)), "text": ["x"] * 100})
    path.write_bytes(path.read_bytes()[:-30])
    return path


def _zero_rows(tmp):
    pq.write_table(pa.table({"id": pa.array([], pa.int64()), "text": pa.array([], pa.string())}), tmp / "in.parquet")
    return tmp / "in.parquet"


ERRORS = {
    "a non-string text column": (_parquet({"id": [1], "text": [3.5]}), {}, "column 'text' holds double, not text"),
    "invalid UTF-8 in a CSV": (_csv(b"id,text\n1,caf\xe9\n"), {}, "not valid UTF-8 (In CSV column #1: CSV conversion error to string: invalid UTF8 data); if the file uses another encoding, set source.encoding"),
    "duplicate ids": (_parquet({"id": [1, 1], "text": ["a", "b"]}), {}, "repeats id 1 at row 2; ids must be unique"),
    "a missing column": (_parquet({"id": [1], "body": ["a"]}), {}, "column 'text' not found; columns are id, body"),
    "a truncated Parquet file": (_truncated, {}, "cannot read as parquet"),
    "an unknown model": (_parquet({"id": [1], "text": ["a"]}), {"embedding__model": "text-embeding-3-small"}, "model text-embeding-3-small was not found (404): check embedding.model"),
    "an output path that is not writable": (_parquet({"id": [1], "text": ["a"]}), {"output__path": "/dev/null/out"}, "output path /dev/null/out: cannot create it"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_a_bad_input_is_one_clear_line_and_costs_nothing(tmp_path, fake_openai, case):
    make, overrides, message = ERRORS[case]
    config = openai_config(tmp_path, fake_openai, make(tmp_path), **overrides)
    with pytest.raises(EmbedpipeError) as error:
        run_pipeline(config)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not fake_openai.calls and not list(tmp_path.glob("out/*.parquet"))


def test_a_model_that_must_be_asked_its_dimensions_is_asked_only_once_the_input_passes(tmp_path, fake_openai):
    fake_openai.models = ("my-model",)
    bad = openai_config(tmp_path, fake_openai, _parquet({"id": [1, 1], "text": ["a", "b"]})(tmp_path), embedding__model="my-model", embedding__dimensions=None)
    with pytest.raises(EmbedpipeError, match="repeats id 1"):
        run_pipeline(bad)
    assert fake_openai.requests == 0
    good = bad.model_copy(update={"source": bad.source.model_copy(update={"path": str(_parquet({"id": [1, 2], "text": ["a", "b"]})(tmp_path))})})
    assert run_pipeline(good)["dimensions"] == fake_openai.dimensions


@pytest.mark.parametrize("text, message", [
    ("source: {path: x.parquet}\nembeding: {model: m}\n", "unknown key embeding"),
    ("source: {path: x.parquet}\nembedding: {provider: opneai}\n", "embedding.provider: use one of azure-openai, azure-openai-batch, local, openai, openai-batch"),
])
def test_a_config_mistake_is_one_line_naming_the_key(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(EmbedpipeError, match=message):
        load_config(path)


def test_blank_texts_are_counted_and_get_null_vectors(tmp_path, fake_openai):
    source = write_parquet(tmp_path / "in.parquet", {"id": [1, 2, 3, 4], "text": [None, "", " \t\n ", "real"]})
    manifest = run_pipeline(openai_config(tmp_path, fake_openai, source))
    vectors = pq.read_table(tmp_path / "out").column("embedding")
    assert [v.is_valid for v in vectors] == [False, False, False, True]
    assert manifest["stats"]["null_texts"] == 3 and list(fake_openai.calls) == ["real"]


def test_a_one_megabyte_cell_is_chunked_and_embedded(tmp_path, fake_openai):
    cell = ("All work and no play makes Jack a dull boy. " * 24_000)[:1_000_000]
    source = write_parquet(tmp_path / "in.parquet", {"id": [1, 2], "text": [cell, "short"]})
    stats = run_pipeline(openai_config(tmp_path, fake_openai, source))["stats"]
    # The same few chunks again and again: each distinct one counted, and paid for, once.
    assert stats["chunks"] == stats["embedded_chunks"] == len(fake_openai.calls) > 1 and not fake_openai.rejected
    assert pq.read_table(tmp_path / "out").column("embedding").null_count == 0


def test_a_latin_1_csv_reads_with_source_encoding(tmp_path, fake_openai):
    path = _csv("id,text\n1,café au lait\n".encode("latin-1"))(tmp_path)
    run_pipeline(openai_config(tmp_path, fake_openai, path, source__encoding="latin-1"))
    assert list(fake_openai.calls) == ["café au lait"]


@pytest.mark.parametrize("make", [_zero_rows, _csv(b"id,text\n")])
def test_a_file_with_no_rows_is_a_run_of_no_rows(tmp_path, fake_openai, make):
    manifest = run_pipeline(openai_config(tmp_path, fake_openai, make(tmp_path)))
    assert (manifest["rows"], manifest["files"], fake_openai.requests) == (0, [], 0)


TEXTS = ["alpha", None, "beta gamma", "alpha", "delta"]
TEXT_COLUMNS = {
    "large_string": lambda texts: pa.array(texts, pa.large_string()),
    "string_view": lambda texts: pa.array(texts, pa.string_view()),
    "dictionary of string": lambda texts: pa.array(texts).dictionary_encode(),
    "dictionary of large_string": lambda texts: pa.array(texts, pa.large_string()).dictionary_encode(),
}


def _texts_of(kind: str, texts: list = TEXTS) -> dict:
    return {"id": list(range(len(texts))), "text": TEXT_COLUMNS[kind](texts), "title": TEXT_COLUMNS[kind](texts)}


def _csv_of_texts(tmp):
    lines = [f"{i},{text or ''},{text or ''}" for i, text in enumerate(TEXTS)]
    return _csv("\n".join(["id,text,title", *lines, ""]).encode())(tmp)


def _vectors(config) -> list:
    return pq.read_table(config.output.path).column(config.output.vector_column).to_pylist()


# A CSV cell is never null, only empty, so a template fills a blank row with its separator: no template there.
TEMPLATES = (None, "{title}: {text}")
KINDS_AND_TEMPLATES = [(kind, template) for kind in TEXT_COLUMNS for template in TEMPLATES] + [("csv", None)]


@pytest.mark.parametrize("kind, template", KINDS_AND_TEMPLATES)
def test_any_text_column_type_embeds_like_a_plain_string_column(tmp_path, fake_openai, kind, template):
    strings = write_parquet(tmp_path / "plain.parquet", {"id": list(range(5)), "text": TEXTS, "title": TEXTS})
    plain = openai_config(tmp_path / "plain", fake_openai, strings, source__text_template=template)
    source = _csv_of_texts(tmp_path) if kind == "csv" else write_parquet(tmp_path / "in.parquet", _texts_of(kind))
    config = openai_config(tmp_path, fake_openai, source, source__text_template=template)
    run_pipeline(plain)
    assert run_pipeline(config)["rows"] == len(TEXTS)
    output = pq.read_table(config.output.path)
    assert [text or None for text in output.column("text").to_pylist()] == TEXTS  # every row, in order, kept
    assert output.column_names == ["id", "text", "title", "embedding"]
    assert _vectors(config) == _vectors(plain)


@pytest.mark.parametrize("kind", TEXT_COLUMNS)
def test_a_rewritten_input_of_any_text_type_reuses_the_rows_it_kept(tmp_path, fake_openai, kind):
    config = openai_config(tmp_path, fake_openai, write_parquet(tmp_path / "in.parquet", _texts_of(kind)))
    run_pipeline(config)
    changed = [*TEXTS[:-1], "epsilon"]
    write_parquet(tmp_path / "in.parquet", _texts_of(kind, changed))  # a new file: only its last row differs
    fake_openai.calls.clear()
    estimate = estimate_config(config, None)
    stats = run_pipeline(config)["stats"]
    assert (estimate.reused_rows, stats["reused_rows"], estimate.chunks_to_send) == (3, 3, 1)
    assert list(fake_openai.calls) == ["epsilon"]
    assert pq.read_table(config.output.path).column("text").to_pylist() == changed
