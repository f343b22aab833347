import pyarrow as pa
import pytest

from pipeline.config import SourceConfig
from pipeline.errors import SourceError
from pipeline.sources.reader import read_batches, resolve_files, row_texts, validate_source
from tests.conftest import write_parquet


def test_csv_with_bom_crlf_and_quoted_newlines(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b'\xef\xbb\xbfid,text\r\n1,"line one\r\nline two"\r\n007,"say ""hi"""\r\n')
    plan = validate_source(SourceConfig(path=str(path)))
    [batch] = list(read_batches(plan.files[0]))
    assert batch.column("id").to_pylist() == ["1", "007"]  # CSV columns stay text: no lost zeros
    assert row_texts(batch, SourceConfig(path=str(path))) == ["line one\r\nline two", 'say "hi"']


def test_directory_and_glob_read_in_name_order(tmp_path):
    for name in ["b.parquet", "a.parquet", "c.csv"]:
        (tmp_path / name).touch()
    (tmp_path / "notes.txt").touch()
    assert [p.name for p in resolve_files(str(tmp_path))] == ["a.parquet", "b.parquet", "c.csv"]
    assert [p.name for p in resolve_files(str(tmp_path / "*.parquet"))] == ["a.parquet", "b.parquet"]


def test_template_renders_several_columns(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", {"id": [1], "title": ["T"], "body": ["B"]})
    config = SourceConfig(path=str(path), text_template="{title}: {body}")
    validate_source(config)
    assert row_texts(next(read_batches(path)), config) == ["T: B"]


def _truncated(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", {"id": list(range(100)), "text": ["x"] * 100})
    path.write_bytes(path.read_bytes()[:-30])
    return path


def _csv(tmp_path, body: bytes):
    path = tmp_path / "t.csv"
    path.write_bytes(body)
    return path


def _dictionary_of_bytes(tmp_path):
    return write_parquet(tmp_path / "t.parquet", {"id": [1], "text": pa.array([b"x"]).dictionary_encode()})


BAD_INPUTS = {
    "missing text column": (lambda p: write_parquet(p / "t.parquet", {"id": [1], "body": ["x"]}), {}, "column 'text' not found"),
    "missing id column": (lambda p: write_parquet(p / "t.parquet", {"text": ["x"]}), {}, "column 'id' not found"),
    "missing template column": (lambda p: write_parquet(p / "t.parquet", {"id": [1], "title": ["x"]}), {"text_template": "{title} {body}"}, "column 'body' not found"),
    "non-text column": (lambda p: write_parquet(p / "t.parquet", {"id": [1], "text": [3.5]}), {}, "holds double, not text"),
    "dictionary of bytes": (_dictionary_of_bytes, {}, "holds dictionary<values=binary"),
    "duplicate id": (lambda p: write_parquet(p / "t.parquet", {"id": [1, 2, 1], "text": ["a", "b", "c"]}), {}, "repeats id 1 at row 3"),
    "null id": (lambda p: write_parquet(p / "t.parquet", {"id": [1, None], "text": ["a", "b"]}), {}, "is null at row 2"),
    "bad template spec": (lambda p: write_parquet(p / "t.parquet", {"id": [1], "title": ["x"]}), {"text_template": "{title:d}"}, "text_template cannot be filled"),
    "list id column": (lambda p: write_parquet(p / "t.parquet", {"id": [[1]], "text": ["x"]}), {}, "id column 'id' holds list<"),
    "truncated parquet": (_truncated, {}, "cannot read as parquet"),
    "not parquet at all": (lambda p: _csv(p, b"hello").rename(p / "t.parquet"), {}, "cannot read as parquet"),
    "csv with bad utf-8": (lambda p: _csv(p, b"id,text\n1,\xff\xfe bad\n"), {}, "not valid UTF-8"),
    "csv with ragged row": (lambda p: _csv(p, b"id,text\n1,a\n2,b,c\n"), {}, "cannot read as csv"),
    "unknown suffix": (lambda p: _csv(p, b"x").rename(p / "t.json"), {}, "t.json: unknown format"),
    "nothing there": (lambda p: p / "absent.parquet", {}, "no .csv, .jsonl, .ndjson or .parquet files found"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_naming_file_and_column(tmp_path, case):
    make, extra, message = BAD_INPUTS[case]
    path = make(tmp_path)
    with pytest.raises(SourceError) as error:
        validate_source(SourceConfig(path=str(path), **extra))
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert "t." in str(error.value) or "absent" in str(error.value)


def test_duplicate_id_across_files_is_caught(tmp_path):
    write_parquet(tmp_path / "a.parquet", {"id": ["x"], "text": ["a"]})
    write_parquet(tmp_path / "b.parquet", {"id": ["x"], "text": ["b"]})
    with pytest.raises(SourceError, match=r"b\.parquet: column 'id' repeats id 'x'"):
        validate_source(SourceConfig(path=str(tmp_path)))


def test_output_column_may_not_shadow_an_input_column(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", {"id": [1], "text": ["a"], "embedding": [1]})
    with pytest.raises(SourceError, match="set output.vector_column"):
        validate_source(SourceConfig(path=str(path)), output_column="embedding")


def test_all_null_text_column_is_accepted(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", {"id": [1], "text": pa.array([None], type=pa.null())})
    assert validate_source(SourceConfig(path=str(path))).total_rows == 1


TEXTS = ["alpha", None, "beta", "alpha"]
TEMPLATED = [(None, TEXTS), ("{title}: {text}", ["alpha: alpha", None, "beta: beta", "alpha: alpha"])]
TEXT_TYPES = {
    "string": pa.array(TEXTS),
    "large_string": pa.array(TEXTS, pa.large_string()),
    "string_view": pa.array(TEXTS, pa.string_view()),
    "dictionary of string": pa.array(TEXTS).dictionary_encode(),
    "dictionary of large_string": pa.array(TEXTS, pa.large_string()).dictionary_encode(),
}


@pytest.mark.parametrize("kind", TEXT_TYPES)
@pytest.mark.parametrize("template, expected", TEMPLATED)
def test_every_kind_of_text_column_is_text(tmp_path, kind, template, expected):
    column = TEXT_TYPES[kind]
    path = write_parquet(tmp_path / "t.parquet", {"id": [1, 2, 3, 4], "text": column, "title": column})
    config = SourceConfig(path=str(path), text_template=template)
    assert validate_source(config).total_rows == 4
    assert row_texts(next(read_batches(path)), config) == expected
