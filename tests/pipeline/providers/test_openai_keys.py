"""The key stays home: OPENAI_API_KEY, the default, goes only to OpenAI's own host; another server
gets a key only from a variable or Secret block the config names, and is refused before any request."""

import pytest

from pipeline.config import Config, EmbeddingConfig
from pipeline.downstream.similarity import embed_query
from pipeline.errors import ConfigError
from pipeline.providers.openai import OpenAIEmbedder
from pipeline.providers.openai_batch import OpenAIBatchEmbedder, batch_command
from pipeline.run.estimate import estimate_config
from pipeline.run.steps import run_pipeline
from tests.conftest import openai_config, write_parquet

SECRET = "sk-test-0123456789-never-send-me"
LOOPBACK = "http://127.0.0.1:8000/v1"

# (base_url, OPENAI_BASE_URL, the config's own key settings) -> refused?
DESTINATIONS = [
    (None, None, {}, False),  # OpenAI itself
    ("https://api.openai.com/v1", None, {}, False),
    ("https://eu.api.openai.com/v1", None, {}, False),
    ("HTTPS://API.OpenAI.com./v1", None, {}, False),
    (LOOPBACK, None, {}, True),
    (LOOPBACK, None, {"api_key_env": "OPENAI_API_KEY"}, False),  # named, even the default: the user chose it
    (LOOPBACK, None, {"api_key_env": "LOCAL_SERVER_KEY"}, False),
    (LOOPBACK, None, {"api_key_block": "local-key"}, False),
    (LOOPBACK, None, {"api_key_block": None}, True),  # a block named null names nothing
    ("https://myresource.openai.azure.com/openai", None, {}, True),  # Azure takes an Azure key
    ("https://api.openai.com.attacker.example/v1", None, {}, True),
    ("https://notopenai.com/v1", None, {}, True),
    ("https://api.openai.com@attacker.example/v1", None, {}, True),  # the host is after the @
    ("localhost:8000/v1", None, {}, True),  # no scheme: not a host we can vouch for
    (None, LOOPBACK, {}, True),  # base_url null: the client would use OPENAI_BASE_URL
    (None, LOOPBACK, {"api_key_env": "LOCAL_SERVER_KEY"}, False),
    (None, "https://api.openai.com/v1", {}, False),
    ("https://api.openai.com/v1", LOOPBACK, {}, False),  # base_url wins over the variable
]


@pytest.mark.parametrize("base_url, environment, key_settings, refused", DESTINATIONS)
def test_the_default_key_goes_only_to_openai(monkeypatch, base_url, environment, key_settings, refused):
    if environment:
        monkeypatch.setenv("OPENAI_BASE_URL", environment)
    else:
        monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    config = EmbeddingConfig(provider="openai", model="text-embedding-3-small", base_url=base_url, **key_settings)
    if not refused:
        OpenAIEmbedder(config, api_key=SECRET).close()
        return
    refusal = "is not OpenAI's: name the variable holding that server's key in embedding.api_key_env"
    with pytest.raises(ConfigError, match=refusal):
        OpenAIEmbedder(config, api_key=SECRET)


def test_the_message_names_where_the_url_came_from_and_shows_no_secret_in_it(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://user:hunter2@10.0.0.5:8000/v1?api-key=hunter3")
    with pytest.raises(ConfigError) as error:
        OpenAIEmbedder(EmbeddingConfig(provider="openai", model="text-embedding-3-small"), api_key=SECRET)
    message = str(error.value)
    assert message.startswith("OPENAI_BASE_URL http://10.0.0.5:8000/v1 (base_url is null) is not OpenAI's")
    assert "hunter" not in message and SECRET not in message and "\n" not in message


def _without_key_settings(config: Config) -> Config:
    """`config` as read from a YAML that leaves api_key_env out."""
    embedding = config.embedding.model_dump(exclude={"api_key_env", "api_key_block"})
    return config.model_copy(update={"embedding": EmbeddingConfig.model_validate(embedding)})


# every way a command reaches a server -> the call, given a config that names no key
ENTRY_POINTS = {
    "run": lambda config: run_pipeline(config, api_key=SECRET),
    "estimate": lambda config: estimate_config(config, SECRET),
    "similar": lambda config: embed_query("a query", _settings(config), config.embedding, SECRET),
    "batches list": lambda config: batch_command(OpenAIBatchEmbedder(config.embedding, SECRET), "list"),
    "batch run": lambda config: run_pipeline(config.model_copy(update={"embedding": _batch(config.embedding)}), SECRET),
    "unknown model (a dimension probe)": lambda config: run_pipeline(_unknown_model(config), api_key=SECRET),
}


def _settings(config: Config) -> dict:
    chunking = {"max_tokens": 512, "overlap_tokens": 64}
    return {"provider": "openai", "model": config.embedding.model, "dimensions": 16, "chunking": chunking}


def _batch(embedding: EmbeddingConfig) -> EmbeddingConfig:
    return embedding.model_copy(update={"provider": "openai-batch"})


def _unknown_model(config: Config) -> Config:
    embedding = config.embedding.model_copy(update={"model": "my-model", "dimensions": None})
    return config.model_copy(update={"embedding": embedding})


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_command_refuses_before_any_request(tmp_path, fake_openai, entry):
    fake_openai.models += ("my-model",)
    source = write_parquet(tmp_path / "in.parquet", {"id": [1, 2], "text": ["alpha", "beta"]})
    config = _without_key_settings(openai_config(tmp_path, fake_openai, source))
    with pytest.raises(ConfigError, match=f"embedding.base_url {fake_openai.base_url} is not OpenAI's"):
        ENTRY_POINTS[entry](config)
    assert fake_openai.requests == 0 and not fake_openai.authorizations, "nothing reached the server"
