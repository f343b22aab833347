"""AzureOpenAIEmbedder through real HTTP to the loopback server's Azure route."""

import pyarrow.parquet as pq
import pytest

from pipeline.config import Config, EmbeddingConfig
from pipeline.errors import ConfigError, ProviderError
from pipeline.providers import check_embedding_config
from pipeline.providers.azure_openai import AzureOpenAIEmbedder
from pipeline.run.steps import run_pipeline
from pipeline.text.tokens import count_tokens
from tests.conftest import write_parquet
from tests.fakes.openai_server import FakeOpenAI, fake_vector
from tests.flows.test_cli import SECRET, embedpipe
from tests.pipeline.providers.test_openai_ratelimits import corpus

KEY = "azure-key-0123456789"


def azure_settings(server: FakeOpenAI, **overrides) -> dict:
    settings = {
        "provider": "azure-openai", "model": "text-embedding-3-small", "dimensions": server.dimensions,
        "base_url": server.azure_endpoint, "deployment": "emb-small", "api_key_env": "AZURE_OPENAI_API_KEY",
    }
    return {**settings, **overrides}


def azure_config(tmp_path, server: FakeOpenAI, source, **embedding) -> Config:
    raw = {
        "source": {"path": str(source)},
        "embedding": azure_settings(server, **embedding),
        "cache": {"path": str(tmp_path / "cache")},
        "output": {"path": str(tmp_path / "out")},
    }
    return Config.model_validate(raw)


def embeddings_requests(server: FakeOpenAI) -> list[tuple[str, dict]]:
    return [(path, headers) for method, path, headers in server.seen if method == "POST"]


@pytest.mark.parametrize(
    "api_version, deployment",
    [(None, "emb-small"), ("2024-06-01", "emb-small"), (None, "Emb.large_v2-1")],
)
def test_a_run_embeds_every_row_through_the_deployment_s_route(tmp_path, api_version, deployment):
    texts = ["alpha", None, "beta", "alpha", "gamma delta"]
    source = write_parquet(tmp_path / "in.parquet", {"id": list(range(len(texts))), "text": texts})
    versions = {"api_version": api_version} if api_version else {}
    with FakeOpenAI(deployments={deployment: "text-embedding-3-small"}) as server:
        manifest = run_pipeline(azure_config(tmp_path, server, source, deployment=deployment, **versions), KEY)
    table = pq.read_table(tmp_path / "out" / "part-00000.parquet")
    vectors = table.column("embedding").to_pylist()
    assert table.num_rows == len(texts) and manifest["stats"]["rows"] == len(texts)
    assert [v is None for v in vectors] == [t is None for t in texts]
    assert vectors[0] == pytest.approx(fake_vector("alpha", 16).tolist(), abs=1e-6)
    expected = f"/openai/deployments/{deployment}/embeddings?api-version={api_version or '2024-10-21'}"
    assert {path for path, _ in embeddings_requests(server)} == {expected}


def test_the_key_leaves_only_in_the_api_key_header(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-must-not-travel")
    with FakeOpenAI() as server:
        embedder = AzureOpenAIEmbedder(EmbeddingConfig(**azure_settings(server)), api_key=KEY)
        embedder.embed(["one", "two"], [1, 1])
        embedder.close()
    [(_, headers)] = embeddings_requests(server)
    assert headers["api-key"] == KEY
    assert "authorization" not in headers
    everything = repr(server.seen)
    assert everything.count(KEY) == 1 and "sk-openai-must-not-travel" not in everything


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"deployment": None}, "embedding.provider azure-openai needs embedding.deployment: the name of the"),
        ({"deployment": "emb/../files"}, "embedding.deployment 'emb/../files' is not a deployment name: use letters"),
        ({"base_url": None}, "embedding.provider azure-openai needs embedding.base_url: the resource's endpoint"),
        ({"api_key_env": None}, "embedding.provider azure-openai: name the variable holding the Azure key"),
    ],
)
def test_a_missing_setting_is_one_line_naming_the_key_and_nothing_is_sent(overrides, message):
    with FakeOpenAI() as server:
        settings = {k: v for k, v in {**azure_settings(server), **overrides}.items() if v is not None}
        config = EmbeddingConfig(**settings)
        for attempt in (lambda: check_embedding_config(config), lambda: AzureOpenAIEmbedder(config, api_key=KEY)):
            with pytest.raises(ConfigError) as raised:
                attempt()
            assert str(raised.value).startswith(message) and "\n" not in str(raised.value)
    assert server.requests == 0 and not server.seen


@pytest.mark.parametrize(
    "overrides, call",
    [
        ({}, lambda embedder: embedder.embed(["one"], [1])),
        ({"model": "my-finetune", "dimensions": None}, lambda embedder: embedder.dimensions),  # the size probe
    ],
)
def test_an_unknown_deployment_stops_at_its_first_answer_with_one_line(overrides, call):
    with FakeOpenAI(deployments={"another": "text-embedding-3-small"}) as server:
        embedder = AzureOpenAIEmbedder(EmbeddingConfig(**azure_settings(server, **overrides)), api_key=KEY)
        with pytest.raises(ProviderError) as raised:
            call(embedder)
        embedder.close()
    assert str(raised.value) == (
        f"deployment emb-small was not found at {server.azure_endpoint} (404): check embedding.deployment, "
        "embedding.base_url and embedding.api_version (2024-10-21)"
    )
    assert len(embeddings_requests(server)) == 1  # not retried


def test_no_key_is_one_line_naming_the_variable():
    missing = "no API key: set the environment variable AZURE_OPENAI_API_KEY"
    with FakeOpenAI() as server, pytest.raises(ProviderError, match=missing):
        AzureOpenAIEmbedder(EmbeddingConfig(**azure_settings(server)), api_key=None)


@pytest.mark.parametrize("window", [1.0])
def test_rate_limits_are_learned_from_the_headers_without_a_429(window):
    with FakeOpenAI(tpm=60_000, window=window, latency=0.02) as server:
        texts = corpus(int(1_000 * (window + 4)))
        embedder = AzureOpenAIEmbedder(EmbeddingConfig(**azure_settings(server)), api_key=KEY)
        embedder.embed(texts, [count_tokens(t) for t in texts])
        embedder.close()
    assert server.rate_limited == 0 and len(server.calls) == len(texts)
    assert embedder.limiter.limit("tokens") == 60_000


def test_another_deployment_is_another_endpoint_and_cache_namespace():
    with FakeOpenAI(deployments={"a": "text-embedding-3-small", "b": "text-embedding-3-small"}) as server:
        configs = [EmbeddingConfig(**azure_settings(server, deployment=name)) for name in ("a", "b")]
        embedders = [AzureOpenAIEmbedder(config, api_key=KEY) for config in configs]
        namespaces = {e.cache_namespace for e in embedders}
        for embedder in embedders:
            embedder.close()
    assert {AzureOpenAIEmbedder.endpoint(c) for c in configs} == {
        f"{server.azure_endpoint}/openai/deployments/a", f"{server.azure_endpoint}/openai/deployments/b"
    }
    assert len(namespaces) == 2


def test_the_cli_runs_an_azure_config_and_lists_its_batches_with_the_azure_key(tmp_path, monkeypatch):
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)  # the CLI helper also sets OPENAI_API_KEY, which must stay home
    source = write_parquet(tmp_path / "docs.parquet", {"id": [1, 2, 3], "text": ["alpha", None, "beta"]})
    config = tmp_path / "azure.yaml"
    with FakeOpenAI() as server:
        embedding = azure_settings(server)
        lines = "".join(f"  {key}: {value}\n" for key, value in embedding.items())
        config.write_text(
            f"source:\n  path: {source}\nembedding:\n{lines}"
            f"cache:\n  path: {tmp_path / 'cache'}\noutput:\n  path: {tmp_path / 'out'}\n"
        )
        run = embedpipe(["run", str(config)], tmp_path / "prefect", tmp_path)
        sent = list(server.seen)
        batches = embedpipe(["batches", "list", "--config", str(config)], tmp_path / "prefect", tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert pq.read_table(tmp_path / "out" / "part-00000.parquet").num_rows == 3
    assert sent and all(headers.get("api-key") == KEY and "authorization" not in headers for _, _, headers in sent)
    assert SECRET not in repr(sent)
    assert batches.returncode == 0 and batches.stdout.strip() == "no batches", batches.stderr
    listed = server.seen[len(sent) :]  # `batches list`: the resource's batches, with the Azure key
    assert [(method, path.split("?")[0]) for method, path, _ in listed] == [("GET", "/openai/batches")]
    assert all(headers.get("api-key") == KEY and "authorization" not in headers for _, _, headers in listed)


def test_a_batch_run_goes_through_the_resource_s_batch_api_naming_the_deployment(tmp_path):
    texts = [f"ticket {i}: the parcel arrived late" for i in range(40)] + [None]
    source = write_parquet(tmp_path / "in.parquet", {"id": list(range(len(texts))), "text": texts})
    with FakeOpenAI(deployments={"emb-batch": "text-embedding-3-small"}) as server:
        server.batch_api.duration = 0.2
        config = azure_config(
            tmp_path, server, source, provider="azure-openai-batch", deployment="emb-batch", batch_poll_seconds=0.05
        )
        manifest = run_pipeline(config, KEY)
        lines = [line for batch in server.batch_api.batches.values() for line in batch["lines"]]
    table = pq.read_table(tmp_path / "out")
    assert table.num_rows == len(texts) and manifest["stats"]["batch_api"]["inputs"] == 40
    assert table.column("embedding")[0].as_py() == pytest.approx(fake_vector(texts[0], 16).tolist(), abs=1e-6)
    assert server.requests == 0, "nothing went through the embeddings endpoint"
    assert {(line["url"], line["body"]["model"]) for line in lines} == {("/embeddings", "emb-batch")}
    posted = {path.split("?")[0] for path, _ in embeddings_requests(server)}
    assert posted == {"/openai/files", "/openai/batches"}
    assert all("api-version=" in path for path, _ in embeddings_requests(server))
    assert all(h.get("api-key") == KEY and "authorization" not in h for _, h in embeddings_requests(server))
