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
