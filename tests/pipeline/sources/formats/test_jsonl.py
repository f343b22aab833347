"""JSON Lines input: read as JSON typed it, streamed in chunks, and every bad line named."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import SourceConfig
from pipeline.errors import SourceError
from pipeline.run.steps import run_pipeline
from pipeline.sources.formats import jsonl
from pipeline.sources.reader import read_batches, row_texts, validate_source
from tests.conftest import openai_config


def write_lines(path, lines: list[bytes]):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def as_lines(records: list[dict]) -> list[bytes]:
    return [json.dumps(record).encode() for record in records]


RECORDS = [
    {"id": 10, "text": "The cat sat.", "meta": {"lang": "en"}},
    {"id": 11, "text": "2024-01-01"},  # looks like a date: stays text
    {"id": 12, "text": None, "score": 0.5},  # a key first seen here: null in the other rows
    {"id": 13, "text": "A dog barked.", "tags": ["a", "b"]},
]


@pytest.mark.parametrize("suffix", [".jsonl", ".ndjson"])
def test_a_jsonl_run_writes_every_row_with_its_columns_in_order(tmp_path, fake_openai, suffix):
    lines = as_lines(RECORDS)
    source = write_lines(tmp_path / "in" / f"docs{suffix}", [lines[0], b"", lines[1], b"   ", *lines[2:]])
    manifest = run_pipeline(openai_config(tmp_path, fake_openai, source))
    table = pq.read_table(tmp_path / "out")
    assert manifest["rows"] == 4
    assert table.column("id").to_pylist() == [10, 11, 12, 13]  # numbers stay numbers, as in Parquet
    assert table.column("text").to_pylist() == ["The cat sat.", "2024-01-01", None, "A dog barked."]
    assert table.column("score").to_pylist() == [None, None, 0.5, None]
    assert table.column("meta").to_pylist() == [{"lang": "en"}, None, None, None]
    assert [vector.is_valid for vector in table.column("embedding")] == [True, True, False, True]


def test_a_file_is_read_in_bounded_memory_in_batches_of_at_most_batch_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl, "CHUNK_BYTES", 64 << 10)
    records = [{"id": i, "text": f"row {i} " + "words " * 40} for i in range(20_000)]
    path = write_lines(tmp_path / "big.jsonl", as_lines(records))
    baseline, peak, ids = pa.total_allocated_bytes(), 0, []
    for batch in read_batches(path, batch_rows=100):
        assert batch.num_rows <= 100
        peak = max(peak, pa.total_allocated_bytes() - baseline)
        ids += batch.column("id").to_pylist()
    assert ids == list(range(20_000))
    assert peak < path.stat().st_size / 10  # about a chunk's worth, never the file


def test_a_key_first_seen_on_the_last_line_is_a_column(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl, "CHUNK_BYTES", 1 << 10)
    records = [{"id": i, "text": "x"} for i in range(500)] + [{"id": 500, "text": "y", "title": "last"}]
    path = write_lines(tmp_path / "t.jsonl", as_lines(records))
    config = SourceConfig(path=str(path), text_template="{text} {title}")
    assert validate_source(config).total_rows == 501
    texts = [text for batch in read_batches(path) for text in row_texts(batch, config)]
    assert texts[0] == "x " and texts[-1] == "y last"  # a missing key is a null


GOOD = b'{"id": 1, "text": "ok"}'
BAD_LINES = {
    "malformed JSON": (b'{"id": 2, "text": ', "not valid JSON"),
    "an array": (b"[1, 2]", "an array, not a JSON object"),
    "a number": (b"7", "a number, not a JSON object"),
    "a string id after numbers": (b'{"id": "two", "text": "b"}', "key 'id' holds a string where earlier lines hold a number"),
    "a repeated key": (b'{"id": 2, "text": "a", "text": "b"}', "key 'text' appears twice"),
    "invalid UTF-8": (b'{"id": 2, "text": "caf\xe9"}', "not valid UTF-8"),
    "trailing garbage": (b'{"id": 2, "text": "b"} x', "not valid JSON"),
}


@pytest.mark.parametrize("case", BAD_LINES)
@pytest.mark.parametrize("good_lines_before", [1, 300])  # in the first chunk, and in a later one
def test_a_bad_line_is_one_line_naming_the_file_and_line(tmp_path, monkeypatch, case, good_lines_before):
    monkeypatch.setattr(jsonl, "CHUNK_BYTES", 1 << 10)
    bad, message = BAD_LINES[case]
    before = [GOOD.replace(b"1", str(i).encode()) for i in range(good_lines_before)]
    path = write_lines(tmp_path / "in.jsonl", [*before, b"", bad, GOOD.replace(b"1", b"9999")])
    with pytest.raises(SourceError) as error:
        validate_source(SourceConfig(path=str(path)))
    assert str(error.value).startswith(f"{path}: line {good_lines_before + 2}: {message}")
    assert "\n" not in str(error.value)


TEXT_COLUMN_ERRORS = {
    "a nested text column": ([{"id": 1, "text": {"title": "t"}}], "text column 'text' holds struct<title: string>"),
    "a fractional id": ([{"id": 1.5, "text": "a"}], "id column 'id' holds double; use a text or integer column"),
    "a repeated numeric id": ([{"id": 1, "text": "a"}, {"id": 1, "text": "b"}], "repeats id 1 at row 2"),
    "no lines at all": ([], "column 'id' not found; columns are none"),
}


@pytest.mark.parametrize("case", TEXT_COLUMN_ERRORS)
def test_columns_are_checked_as_any_format_s_are(tmp_path, case):
    records, message = TEXT_COLUMN_ERRORS[case]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in as_lines(records)))
    with pytest.raises(SourceError, match=message):
        validate_source(SourceConfig(path=str(path)))


@pytest.mark.parametrize("encoding, data, text", [
    ("utf-8", '{"id": "007", "text": "café"}\n'.encode(), "café"),
    ("latin-1", '{"id": "007", "text": "café"}\n'.encode("latin-1"), "café"),
    ("utf-8-sig", '\ufeff{"id": "007", "text": "naïve"}\r\n'.encode(), "naïve"),
])
def test_source_encoding_is_honoured(tmp_path, encoding, data, text):
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    config = SourceConfig(path=str(path), encoding=encoding)
    validate_source(config)
    [batch] = read_batches(path, encoding=encoding)
    assert batch.column("id").to_pylist() == ["007"] and row_texts(batch, config) == [text]
