"""Formats by suffix, and a format added by a package outside embedpipe through the
`embedpipe.formats` entry-point group, with no change to any embedpipe module."""

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from pipeline.config import SourceConfig
from pipeline.errors import SourceError
from pipeline.sources.formats import ENTRY_POINT_GROUP, InputFormat, format_for, formats_by_suffix
from pipeline.sources.reader import read_batches, resolve_files, row_texts, validate_source
from tests.conftest import write_parquet


class TsvFormat(InputFormat):
    """Tab-separated values: the whole of a new format."""

    name = "tsv"
    suffixes = (".tsv",)

    def schema(self, file, encoding):
        return next(self.batches(file, None, 1, None, encoding)).schema

    def batches(self, file, columns, batch_rows, row_groups, encoding):
        table = pacsv.read_csv(file, parse_options=pacsv.ParseOptions(delimiter="\t"))
        yield from table.select(columns or table.column_names).to_batches(max_chunksize=batch_rows)


class NotAFormat:
    suffixes = (".nope",)


class ClaimsCsv(TsvFormat):
    suffixes = (".csv",)


def install(tmp_path, monkeypatch, target: str, site: str = "site", other_groups: str = ""):
    """Install a package that declares `target` under the entry-point group: its metadata on sys.path."""
    info = tmp_path / site / "embedpipe_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: embedpipe-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"{other_groups}[{ENTRY_POINT_GROUP}]\nplugin = {target}\n")
    monkeypatch.syspath_prepend(str(tmp_path / site))


@pytest.fixture(autouse=True)
def fresh_registry():
    formats_by_suffix.cache_clear()  # installed formats are loaded once a process
    yield
    formats_by_suffix.cache_clear()


def test_a_format_from_an_installed_package_is_validated_and_read(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, f"{__name__}:TsvFormat")
    path = tmp_path / "docs.tsv"
    path.write_text("id\ttitle\tbody\n1\tHello\tworld\n2\tBye\tnow\n")
    config = SourceConfig(path=str(tmp_path), text_template="{title}: {body}")
    plan = validate_source(config)
    assert (plan.files, plan.total_rows) == ([path], 2)
    assert [text for batch in read_batches(path) for text in row_texts(batch, config)] == ["Hello: world", "Bye: now"]


def test_the_unknown_format_message_lists_installed_formats_too(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, f"{__name__}:TsvFormat")
    with pytest.raises(SourceError, match=r"t\.xlsx: unknown format; use .csv, .jsonl, .ndjson, .parquet or .tsv$"):
        format_for(tmp_path / "t.xlsx")


def test_a_package_found_twice_on_the_path_is_loaded_once(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, f"{__name__}:TsvFormat", site="older")
    install(tmp_path, monkeypatch, f"{__name__}:TsvFormat", site="newer", other_groups="[console_scripts]\nx = y:z\n")
    assert format_for(tmp_path / "t.tsv").name == "tsv"  # not "tsv claims .tsv, which tsv reads already"


BROKEN_PACKAGES = {
    "a missing module": ("no_such_module_anywhere:Format", "cannot load it"),
    "not an InputFormat": (f"{__name__}:NotAFormat", "is not an InputFormat class"),
    "a built-in suffix": (f"{__name__}:ClaimsCsv", "tsv claims .csv, which csv reads already"),
}


@pytest.mark.parametrize("case", BROKEN_PACKAGES)
def test_a_broken_package_fails_the_run_in_one_line_naming_its_entry_point(tmp_path, monkeypatch, case):
    target, message = BROKEN_PACKAGES[case]
    install(tmp_path, monkeypatch, target)
    source = write_parquet(tmp_path / "in.parquet", {"id": [1], "text": ["a"]})
    with pytest.raises(SourceError) as error:
        validate_source(SourceConfig(path=str(source)))
    assert f"entry point plugin = {target}" in str(error.value) and message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name, expected", [
    ("a.parquet", "parquet"), ("B.CSV", "csv"), ("c.jsonl", "jsonl"), ("d.ndjson", "jsonl"),
])
def test_a_file_s_format_follows_its_suffix_whatever_its_case(tmp_path, name, expected):
    assert format_for(tmp_path / name).name == expected


def test_a_directory_keeps_the_files_some_format_reads(tmp_path):
    for name in ["b.jsonl", "a.parquet", "c.ndjson", "notes.txt", "d.json"]:
        (tmp_path / name).touch()
    assert [p.name for p in resolve_files(str(tmp_path))] == ["a.parquet", "b.jsonl", "c.ndjson"]


SAME_ROWS = {
    ".parquet": lambda path: write_parquet(path, {"id": ["a", "b"], "text": ["one", None]}),
    ".csv": lambda path: path.write_text("id,text\na,one\nb,\n"),
    ".jsonl": lambda path: path.write_text('{"id": "a", "text": "one"}\n{"id": "b", "text": null}\n'),
}


@pytest.mark.parametrize("suffix", SAME_ROWS)
def test_every_built_in_format_reads_the_same_rows(tmp_path, suffix):
    path = tmp_path / f"in{suffix}"
    SAME_ROWS[suffix](path)
    config = SourceConfig(path=str(path))
    assert validate_source(config).total_rows == 2
    [batch] = read_batches(path)
    assert batch.column("id").to_pylist() == ["a", "b"]
    assert [text or None for text in row_texts(batch, config)] == ["one", None]  # CSV reads an empty cell as ""
    assert pa.types.is_string(batch.schema.field("text").type)
