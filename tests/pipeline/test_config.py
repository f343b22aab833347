import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError

GOOD = "source:\n  path: data/docs.parquet\nembedding:\n  provider: local\n"


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults_fill_the_contract_keys(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.source.text_column == "text"
    assert (config.chunking.max_tokens, config.chunking.overlap_tokens) == (512, 64)
    assert config.embedding.api_key_env == "OPENAI_API_KEY"
    assert config.output.vector_column == "embedding"


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        (GOOD + "  modle: x\n", [], "unknown key embedding.modle"),
        ("source: {}\n", [], "missing key source.path"),
        (GOOD + "chunking:\n  max_tokens: 100\n  overlap_tokens: 100\n", [], "overlap_tokens must be"),
        (GOOD, ["chunking.max_tokens=lots"], "chunking.max_tokens"),
        (GOOD, ["embedding.provider=cohere"], "embedding.provider"),
        (GOOD, ["nonsense"], "expected section.key=value"),
        ("source: [1, 2\n", [], "not valid UTF-8 YAML"),
        (GOOD, ["output.path=[x"], "the value is not valid YAML"),
        (GOOD + "output:\n  path: out\n  chunks_path: out/chunks\n", [], "chunks_path must lie outside path"),
        (GOOD + "source:\n  path: x\n  text_column: a\n  text_template: '{b}'\n", [], "not both"),
    ],
)
def test_bad_config_is_one_line_naming_the_key_and_file(tmp_path, text, overrides, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path, overrides)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert str(path) in str(error.value) or "--set" in str(error.value)


def test_set_overrides_any_key_with_a_yaml_value(tmp_path):
    config = load_config(write(tmp_path, GOOD), ["embedding.dimensions=256", "output.path=elsewhere"])
    assert config.embedding.dimensions == 256
    assert config.output.path == "elsewhere"


def test_set_fills_a_section_left_empty(tmp_path):
    config = load_config(write(tmp_path, GOOD + "cache:\n"), ["cache.path=/tmp/c"])
    assert config.cache.path == "/tmp/c"


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml not found"):
        load_config(tmp_path / "nope.yaml")


FIX = "the next run would read its own output; put output.{key} elsewhere"


@pytest.mark.parametrize(
    "source, output, chunks, message",
    [
        ("data", "data/out", None, "output.path data/out lies inside source.path data: the next run would read"),
        ("data", "data", None, "output.path data and source.path data are the same place"),
        ("data/./", "data", None, "output.path data and source.path data/./ are the same place"),
        ("out/docs/in.parquet", "out/docs", None, "source.path out/docs/in.parquet lies inside output.path out/docs"),
        ("out/docs/new", "out", None, "source.path out/docs/new lies inside output.path out"),
        ("data", "vectors", "data/chunks", "output.chunks_path data/chunks lies inside source.path data: the next run"),
        ("s3://bucket/in", "s3://bucket/in/out", None, "output.path s3://bucket/in/out lies inside source.path s3://"),
        ("s3://bucket/in/*.parquet", "s3://bucket/in", None, "the glob source.path s3://bucket/in/*.parquet would"),
        # a glob is refused only where it could read the output's part files, or reads from inside the output
        ("data/*.parquet", "data", None, "the glob source.path data/*.parquet would read output.path data's files"),
        ("./data/*.parquet", "data/", None, "the glob source.path ./data/*.parquet would read output.path data/'s"),
        ("data/*/*.parquet", "data/out", None, "the glob source.path data/*/*.parquet would read output.path data/out"),
        ("data/[ab]*/*.parquet", "data/all", None, "the glob source.path data/[ab]*/*.parquet would read output"),
        ("*/*.parquet", "out", None, "the glob source.path */*.parquet would read output.path out's files"),
        ("data/**/*.parquet", "data/out", None, "the glob source.path data/**/*.parquet would read output.path"),
        ("data/**/*.csv", "data/deep/out", None, "the glob source.path data/**/*.csv would read output.path"),
        ("data/*/**/x.csv", "data/a/b", None, "the glob source.path data/*/**/x.csv would read output.path data/a/b"),
        ("**/*.parquet", "out/docs", None, "the glob source.path **/*.parquet would read output.path out/docs's"),
        ("in/*/*.parquet", "vectors", "in/chunks", "the glob source.path in/*/*.parquet would read output.chunks_path"),
        ("data/*.csv", "data", None, "output.path data and source.path data/*.csv are the same place"),
        ("data/in/*.parquet", "data", None, "source.path data/in/*.parquet lies inside output.path data"),
        ("out/docs/*/*.parquet", "out", None, "source.path out/docs/*/*.parquet lies inside output.path out"),
        ("data/docs.parquet", "data/out", None, None),  # a file beside the output is fine
        ("data/docs.parquet", "data/docs", None, None),
        ("data", "database", None, None),  # a shared prefix is not nesting
        ("data/*.parquet", "out", "chunks", None),
        ("*.parquet", "out/docs", None, None),  # '*' never crosses a '/': out/docs/part-00000.parquet is not read
        ("*.parquet", "out", None, None),
        ("data/*.parquet", "data/out", None, None),
        ("data/2024-*/docs.parquet", "data/out", None, None),
        ("data/*/x.parquet", "data/out", None, None),  # data/out/part-00000.parquet is not x.parquet
        ("data/[ab]*/*.parquet", "data/out", None, None),
        ("data/2024-*/**/*.parquet", "data/out", None, None),  # the recursion starts below data/2024-*
        ("data/in/**/*.parquet", "data/out", None, None),
        ("s3://bucket/in/*.parquet", "s3://bucket/in/out", None, None),
        ("s3://bucket/in", "s3://bucket/input", None, None),
        ("s3://bucket/in", "in/out", None, None),  # a local path and a URL never nest
        ("in", "s3://bucket/in/out", None, None),
    ],
)
def test_an_output_inside_the_source_or_around_it_is_refused(tmp_path, monkeypatch, source, output, chunks, message):
    monkeypatch.chdir(tmp_path)
    chunks_line = f"  chunks_path: '{chunks}'\n" if chunks else ""
    path = write(tmp_path, f"source:\n  path: '{source}'\noutput:\n  path: '{output}'\n{chunks_line}")
    if message is None:
        assert load_config(path).output.path == output
        return
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).endswith(FIX.format(key="chunks_path" if chunks else "path"))


def test_a_set_override_is_checked_for_nesting_too(tmp_path):
    with pytest.raises(ConfigError, match="output.path data/docs/out lies inside source.path data/docs: the next run"):
        load_config(write(tmp_path, GOOD), ["source.path=data/docs", "output.path=data/docs/out"])


def test_a_glob_and_an_output_are_compared_as_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, f"source:\n  path: '{tmp_path}/*/*.parquet'\noutput:\n  path: out\n")
    with pytest.raises(ConfigError, match=r"the glob source.path .*/\*/\*.parquet would read output.path out's files"):
        load_config(path)


@pytest.mark.parametrize("overrides, message", [
    (["output.vector_dtype=int4"], "output.vector_dtype: use one of float32, float16, int8, binary"),
    (["output.dimensions_truncate=0"], "dimensions_truncate must be at least 1"),
    (["output.iceberg={catalog_uri: 'sqlite:///c.db', warehouse: w, table: vectors}"], "output.iceberg.table: name it namespace.table"),
    (["output.iceberg={catalog_uri: 'sqlite:///c.db', table: docs.vectors}"], "missing key output.iceberg.warehouse"),
])
def test_warehouse_output_keys_are_checked_in_one_line(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config(write(tmp_path, GOOD), overrides)


def test_warehouse_output_keys_are_set_like_any_other(tmp_path):
    iceberg = "output.iceberg={catalog_uri: 'sqlite:///c.db', warehouse: w, table: docs.vectors}"
    config = load_config(write(tmp_path, GOOD), ["output.vector_dtype=int8", "output.dimensions_truncate=256", iceberg])
    assert (config.output.vector_dtype, config.output.dimensions_truncate, config.output.iceberg.table) == ("int8", 256, "docs.vectors")
