"""Providers by name: the built-in ones, and one a package outside embedpipe registers through
the `embedpipe.providers` entry point — one new file, installed, and a run uses it."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.config import EmbeddingConfig
from pipeline.errors import ConfigError
from pipeline.providers import provider_class, provider_names
from pipeline.providers.registry import BUILT_IN
from tests.conftest import write_parquet

TOY_PROVIDER = '''
"""A provider outside embedpipe: a vector from each text's bytes, no network."""

import hashlib

import numpy as np

from pipeline.providers.base import Embedder


class ToyEmbedder(Embedder):
    provider = "toy"
    price_kind = None  # free
    max_batch_inputs = 3

    def __init__(self, config, api_key=None):
        super().__init__(config)

    @property
    def dimensions(self):
        return 8

    def embed_batch(self, texts, token_counts=None):
        self.tally()
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest()[:8], dtype=np.uint8) for t in texts]
        return np.stack(rows).astype(np.float32) + 1
'''

TOY_PROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "embedpipe-toy"
version = "0.1.0"

[project.entry-points."embedpipe.providers"]
toy = "embedpipe_toy:ToyEmbedder"
"""

RUN = """
import json, sys
from pipeline.config import load_config
from pipeline.run.steps import run_pipeline
manifest = run_pipeline(load_config(sys.argv[1]))
print(json.dumps({"rows": manifest["rows"], "requests": manifest["stats"]["requests"]}))
"""


@pytest.fixture(scope="module")
def toy_installed(tmp_path_factory):
    """The toy package, installed into a folder of its own (as pip installs any plugin)."""
    root = tmp_path_factory.mktemp("toy")
    (root / "src" / "embedpipe_toy").mkdir(parents=True)
    (root / "src" / "embedpipe_toy" / "__init__.py").write_text(TOY_PROVIDER)
    (root / "src" / "pyproject.toml").write_text(TOY_PROJECT)
    site = root / "site"
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation"]
    subprocess.run([*command, "--target", str(site), str(root / "src")], check=True, capture_output=True)
    return site


def test_a_provider_a_package_registers_embeds_a_run(tmp_path, toy_installed):
    texts = ["first", "second", "third", "fourth", "first"]
    write_parquet(tmp_path / "in.parquet", {"id": list(range(5)), "text": texts})
    config = {
        "source": {"path": str(tmp_path / "in.parquet"), "id_column": "id", "text_column": "text"},
        "embedding": {"provider": "toy", "model": "toy-model"},
        "cache": {"path": str(tmp_path / "cache")},
        "output": {"path": str(tmp_path / "out")},
    }
    (tmp_path / "run.yaml").write_text(json.dumps(config))
    env = {"PYTHONPATH": f"{toy_installed}:{sys.path[0] if sys.path[0] else '.'}", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", RUN, str(tmp_path / "run.yaml")], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"rows": 5, "requests": 2}  # 4 distinct texts, 3 a request
    table = pq.read_table(tmp_path / "out")
    assert table.num_rows == 5 and table.column("embedding").type.list_size == 8
    assert table.column("embedding")[0] == table.column("embedding")[4]  # the same text, the same vector


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_every_built_in_provider_is_found_by_its_name(name):
    assert provider_class(name).provider == name


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: EmbeddingConfig(provider="cohere"), "use one of"),
        (lambda: provider_class("cohere"), "embedding.provider 'cohere' is not known"),
    ],
)
def test_an_unknown_provider_is_one_line_naming_the_known_ones(build, message):
    with pytest.raises((ConfigError, ValueError)) as raised:
        build()
    assert message in str(raised.value) and "openai" in str(raised.value)
    assert "local" in provider_names()


@pytest.mark.parametrize(
    ("name", "price_kind", "rate_limited", "query_provider"),
    [
        ("local", None, False, None),
        ("openai", "sync", True, None),
        ("openai-batch", "batch", True, "openai"),
    ],
)
def test_providers_say_what_they_can_do(name, price_kind, rate_limited, query_provider):
    cls = provider_class(name)
    assert (cls.price_kind, cls.rate_limited, cls.query_provider) == (price_kind, rate_limited, query_provider)


def test_no_module_outside_providers_names_a_provider():
    # A new provider is one new file: nothing else may ask for one by its name.
    root = Path(__file__).resolve().parents[3]
    modules = [p for folder in ("pipeline", "flows") for p in (root / folder).rglob("*.py")]
    named = {
        f"{path.relative_to(root)} {node.value!r}"
        for path in modules
        if "providers" not in path.parts
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value in BUILT_IN
    }
    allowed = {
        "pipeline/config.py 'local'",  # the contract's default provider (DESIGN.md)
        "pipeline/remote.py 'local'",  # fsspec's local:// scheme, not the provider
    }
    assert {entry for entry in named if entry not in allowed} == set()


def test_a_provider_counting_tokens_in_another_vocabulary_is_refused_with_one_line():
    from pipeline.errors import ProviderError
    from pipeline.providers.local import LocalEmbedder

    class OtherVocabulary(LocalEmbedder):
        tokenizer = "o200k_base"

    with pytest.raises(ProviderError, match="counts tokens in o200k_base; embedpipe has cl100k_base"):
        OtherVocabulary(EmbeddingConfig())


@pytest.mark.parametrize("provider, model, cut", [
    ("openai", "text-embedding-3-small", True),
    ("openai", "text-embedding-3-large", True),
    ("openai", "text-embedding-ada-002", False),
    ("openai-batch", "text-embedding-3-small", True),
    ("azure-openai", "text-embedding-3-large", True),
    ("local", "all-MiniLM-L6-v2", False),
])
def test_each_provider_says_which_models_are_matryoshka_trained(provider, model, cut):
    assert provider_class(provider).matryoshka(model) is cut
