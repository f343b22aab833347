"""Shared fixtures: a loopback OpenAI server and configs that point at it."""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.config import Config
from tests.fakes.openai_server import FakeOpenAI


@pytest.fixture
def fake_openai():
    """A fake OpenAI server that answers `data` items in shuffled order."""
    with FakeOpenAI(shuffle=True) as server:
        yield server


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on loopback, one for the whole session (each test gets its own bucket)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """A fresh bucket on the local S3; credentials and endpoint come from the environment, as
    they would for a user (never from the YAML)."""
    from pipeline.remote import filesystem

    environment = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_endpoint}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    bucket = f"bucket-{uuid.uuid4().hex[:12]}"
    fs, _ = filesystem(f"s3://{bucket}")
    fs.mkdir(bucket)
    return fs, bucket


def write_parquet(path: Path, columns: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def openai_config(tmp_path: Path, server: FakeOpenAI, source: Path, **overrides) -> Config:
    """A run config embedding `source` through `server`, with cache and output under `tmp_path`.
    It names `api_key_env`, as a config for a server other than OpenAI's must."""
    embedding = {"provider": "openai", "model": "text-embedding-3-small", "dimensions": server.dimensions}
    raw = {
        "source": {"path": str(source)},
        "embedding": {**embedding, "base_url": server.base_url, "api_key_env": "OPENAI_API_KEY"},
        "cache": {"path": str(tmp_path / "cache")},
        "output": {"path": str(tmp_path / "out")},
    }
    for key, value in overrides.items():
        section, name = key.split("__")
        raw.setdefault(section, {})[name] = value
    return Config.model_validate(raw)


def write_run_yaml(tmp_path: Path, server: FakeOpenAI, texts: list[str], **embedding) -> Path:
    """`tmp_path/run.yaml`: `texts` (ids 0..n) from `tmp_path/in/docs.parquet` through `server`, cache and
    output under `tmp_path`; `embedding` adds or overrides embedding keys. For the command line."""
    source = write_parquet(tmp_path / "in" / "docs.parquet", {"id": list(range(len(texts))), "text": texts})
    settings = {"provider": "openai", "model": "text-embedding-3-small", "dimensions": server.dimensions,
                "base_url": server.base_url, "api_key_env": "OPENAI_API_KEY", **embedding}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "source": {"path": str(source)}, "embedding": settings,
        "cache": {"path": str(tmp_path / "cache")}, "output": {"path": str(tmp_path / "out")},
    }))
    return path
