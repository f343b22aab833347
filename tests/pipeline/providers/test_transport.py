"""The connection pools built in threads: a request made before its pool is ready waits for it; a
certificate store that cannot be read stops an https run with one line, before anything is sent,
and a plain-http server needs no certificates at all."""

import time

import httpx2
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import EmbeddingConfig
from pipeline.errors import ProviderError
from pipeline.providers.openai import OpenAIEmbedder
from pipeline.providers.transport import BackgroundTransport
from pipeline.run.steps import run_pipeline
from tests.conftest import openai_config, write_parquet
from tests.fakes.openai_server import fake_vector


def test_a_request_made_while_the_pool_is_still_being_built_waits_for_it(fake_openai, monkeypatch):
    build = httpx2.HTTPTransport
    monkeypatch.setattr(httpx2, "HTTPTransport", lambda **options: time.sleep(0.3) or build(**options))
    started = time.monotonic()
    settings = {"model": "text-embedding-3-small", "dimensions": 16, "api_key_env": "OPENAI_API_KEY"}
    config = EmbeddingConfig(provider="openai", base_url=fake_openai.base_url, **settings)
    embedder = OpenAIEmbedder(config, api_key="sk-test")
    try:
        vectors = embedder.embed(["a", "b", "c"], [1, 1, 1])
    finally:
        embedder.close()
    np.testing.assert_allclose(vectors, np.stack([fake_vector(t, 16) for t in "abc"]), atol=1e-6)
    assert fake_openai.first_request_at - started >= 0.3 and fake_openai.requests == 1


@pytest.mark.parametrize("certificates", [None, "not a certificate\n"])
def test_a_certificate_store_that_cannot_be_read_stops_an_https_run_before_any_request(tmp_path, fake_openai, monkeypatch, certificates):
    store = tmp_path / "ca.pem"
    if certificates is not None:
        store.write_text(certificates)
    monkeypatch.setenv("SSL_CERT_FILE", str(store))
    source = write_parquet(tmp_path / "in.parquet", {"id": [1, 2], "text": ["a", "b"]})
    https = fake_openai.base_url.replace("http://", "https://", 1)  # a regression would try TLS on loopback, never the internet
    config = openai_config(tmp_path, fake_openai, source, embedding__base_url=https)
    with pytest.raises(ProviderError, match=r"^cannot set up HTTPS: .*; check SSL_CERT_FILE and SSL_CERT_DIR$"):
        run_pipeline(config)
    assert fake_openai.requests == 0 and not list((tmp_path / "out").glob("*.parquet"))


def test_a_plain_http_server_needs_no_certificates(tmp_path, fake_openai, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))  # a model served on the local network
    source = write_parquet(tmp_path / "in.parquet", {"id": [1, 2], "text": ["a", "b"]})
    config = openai_config(tmp_path, fake_openai, source)
    run_pipeline(config)
    assert pq.read_table(config.output.path).num_rows == 2


def test_a_redirect_to_https_gets_the_pool_that_checks_certificates(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    transport = BackgroundTransport()
    transport.prepare("http")  # the base URL's scheme
    with pytest.raises(ProviderError, match=r"^cannot set up HTTPS"):
        transport.handle_request(httpx2.Request("POST", "https://127.0.0.1:9/v1/embeddings"))
    transport.close()


def test_a_request_after_the_transport_closed_is_refused_as_closed_not_as_a_certificate_setting():
    transport = BackgroundTransport()
    transport.close()
    with pytest.raises(ProviderError, match="the connections were closed") as raised:
        transport.ready("http")
    assert "SSL_CERT_FILE" not in str(raised.value)
