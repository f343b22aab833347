"""The connection pool built in a thread: a request made before it is ready waits for it, and a
certificate store that cannot be read stops the run with one line, before anything is sent."""

import time

import httpx2
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import EmbeddingConfig
from pipeline.errors import ProviderError
from pipeline.providers.openai import OpenAIEmbedder
from pipeline.run import run_pipeline
from tests.conftest import openai_config, write_parquet
from tests.fakes.openai_server import fake_vector


def test_a_request_made_while_the_pool_is_still_being_built_waits_for_it(fake_openai, monkeypatch):
    build = httpx2.HTTPTransport
    monkeypatch.setattr(httpx2, "HTTPTransport", lambda **options: time.sleep(0.3) or build(**options))
    started = time.monotonic()
    config = EmbeddingConfig(provider="openai", model="text-embedding-3-small", dimensions=fake_openai.dimensions, base_url=fake_openai.base_url)
    embedder = OpenAIEmbedder(config, api_key="sk-test")
    try:
        vectors = embedder.embed(["a", "b", "c"], [1, 1, 1])
    finally:
        embedder.close()
    np.testing.assert_allclose(vectors, np.stack([fake_vector(t, 16) for t in "abc"]), atol=1e-6)
    assert fake_openai.first_request_at - started >= 0.3 and fake_openai.requests == 1


@pytest.mark.parametrize("certificates", [None, "not a certificate\n"])
def test_a_certificate_store_that_cannot_be_read_stops_the_run_before_any_request(tmp_path, fake_openai, monkeypatch, certificates):
    store = tmp_path / "ca.pem"
    if certificates is not None:
        store.write_text(certificates)
    monkeypatch.setenv("SSL_CERT_FILE", str(store))
    source = write_parquet(tmp_path / "in.parquet", {"id": [1, 2], "text": ["a", "b"]})
    config = openai_config(tmp_path, fake_openai, source)
    with pytest.raises(ProviderError, match=r"^cannot set up HTTPS: .*; check SSL_CERT_FILE and SSL_CERT_DIR$"):
        run_pipeline(config)
    assert fake_openai.requests == 0 and not list((tmp_path / "out").glob("*.parquet"))
    monkeypatch.delenv("SSL_CERT_FILE")
    run_pipeline(config)  # the next run, the setting fixed, embeds every row
    assert pq.read_table(config.output.path).num_rows == 2
