"""The packaged all-MiniLM-L6-v2, loaded from disk, through each backend."""

import numpy as np
import pytest

from pipeline.config import EmbeddingConfig
from pipeline.errors import ConfigError, ProviderError
from pipeline.providers.local import LocalEmbedder
from pipeline.providers.local.backends import backend_names

BACKENDS = backend_names()
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Interest rates rose again this quarter, and mortgage lenders tightened their terms.",
    "Return a list of the words in the string, using sep as the delimiter string.",
    "The kernel scheduler decides which thread runs next on each processor core.",
    "Bake the bread for forty minutes, until the crust is golden brown.",
    "A fast brown fox leaps over a sleepy dog.",
    "Open the file and return a corresponding file object.",
    "The central bank held rates steady despite rising inflation.",
]
MIN_MEAN_COSINE_TO_TORCH = {"torch": 0.9999, "onnx": 0.999, "onnx-int8": 0.98, "static": 0.3}  # static: a sketch
PARAPHRASE_MARGIN = {"torch": 0.2, "onnx": 0.2, "onnx-int8": 0.2, "static": 0.0}


def similarity(embedder, a: str, b: str) -> float:
    u, v = embedder.embed([a, b], [1, 1])
    return float(u @ v)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cat_is_nearer_dog_than_car(embedders, backend):
    assert similarity(embedders[backend], "cat", "dog") > similarity(embedders[backend], "cat", "car")


@pytest.mark.parametrize("backend", BACKENDS)
def test_paraphrases_are_nearer_than_other_topics(embedders, backend):
    fox, paraphrase, rates = CORPUS[0], CORPUS[5], CORPUS[1]
    assert similarity(embedders[backend], fox, paraphrase) > similarity(embedders[backend], fox, rates) + PARAPHRASE_MARGIN[backend]


@pytest.mark.parametrize("backend", BACKENDS)
def test_vectors_are_unit_length_384_floats(embedders, backend):
    vectors = embedders[backend].embed(["one", "two"], [1, 1])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vectors_agree_with_torch_fp32(embedders, backend):
    expected = embedders["torch"].embed(CORPUS, [1] * len(CORPUS))
    cosines = np.sum(embedders[backend].embed(CORPUS, [1] * len(CORPUS)) * expected, axis=1)
    assert cosines.mean() >= MIN_MEAN_COSINE_TO_TORCH[backend]


def test_each_backend_has_a_cache_namespace_of_its_own_and_torch_keeps_the_old_one(embedders):
    namespaces = {name: embedder.cache_namespace for name, embedder in embedders.items()}
    assert namespaces["torch"] == "local:all-MiniLM-L6-v2:384"  # caches written before backends stay valid
    assert len(set(namespaces.values())) == len(namespaces)


def test_an_unknown_model_says_what_loads(tmp_path):
    with pytest.raises(ProviderError, match="nothing is downloaded"):
        LocalEmbedder(EmbeddingConfig(provider="local", model="bert-base-uncased", models_path=str(tmp_path)))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("backend", "onnx-fp16", "embedding.backend: use auto or one of torch, onnx, onnx-int8, static"),
        ("device", "gpu", "embedding.device: 'gpu': use auto, cpu, cuda or cuda:N"),
        ("device", ["cuda:0", "tpu"], "embedding.device: 'tpu': use auto, cpu, cuda or cuda:N"),
        ("backend_min_cosine", 1.5, "backend_min_cosine must lie between -1 and 1"),
    ],
)
def test_a_misspelt_setting_is_one_line_naming_the_choices(tmp_path, key, value, message):
    from pipeline.config import load_config

    path = tmp_path / "run.yaml"
    path.write_text("source: {path: docs.parquet}\n")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as raised:
        load_config(path, [f"embedding.{key}={value}"])
    assert "\n" not in str(raised.value)


def test_models_lie_beside_the_cache_unless_set(tmp_path):
    from pipeline.config import Config

    config = Config.model_validate({"source": {"path": "x.parquet"}, "cache": {"path": str(tmp_path / "c")}})
    assert config.embedding.models_path == str(tmp_path / "c" / "models")
