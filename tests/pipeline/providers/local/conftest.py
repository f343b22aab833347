"""The packaged all-MiniLM-L6-v2 through every backend, its exports and distillation made once
per test session in a session-scoped folder (about 20 s on two cores, most of it distilling)."""

import pytest

from pipeline.config import EmbeddingConfig
from pipeline.providers.local import LocalEmbedder
from pipeline.providers.local.backends import backend_names


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def embedders(models_dir):
    """Backend name -> a LocalEmbedder on the CPU through it."""
    made = {
        name: LocalEmbedder(EmbeddingConfig(backend=name, device="cpu", models_path=str(models_dir)))
        for name in backend_names()
    }
    yield made
    for embedder in made.values():
        embedder.close()
