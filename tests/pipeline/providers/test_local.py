"""The packaged all-MiniLM-L6-v2, loaded from disk."""

import numpy as np
import pytest

from pipeline.config import EmbeddingConfig
from pipeline.errors import ProviderError
from pipeline.providers.local import LocalEmbedder


@pytest.fixture(scope="module")
def local():
    return LocalEmbedder(EmbeddingConfig(provider="local", model="all-MiniLM-L6-v2"))


def similarity(local, a: str, b: str) -> float:
    u, v = local.embed([a, b], [1, 1])
    return float(u @ v)


def test_cat_is_nearer_dog_than_car(local):
    assert similarity(local, "cat", "dog") > similarity(local, "cat", "car")


def test_paraphrases_are_close(local):
    assert similarity(local, "The quick brown fox jumps over the lazy dog.", "A fast brown fox leaps over a sleepy dog.") > 0.8


def test_vectors_are_unit_length_384_floats(local):
    vectors = local.embed(["one", "two"], [1, 1])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_an_unknown_model_says_what_loads(tmp_path):
    with pytest.raises(ProviderError, match="nothing is downloaded"):
        LocalEmbedder(EmbeddingConfig(provider="local", model="bert-base-uncased"))
