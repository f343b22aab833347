"""`embedpipe deploy` against a real Prefect server on loopback: register, run once by a worker."""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pyarrow.parquet as pq
import pytest

from tests.conftest import write_parquet
from tests.flows.test_cli import SECRET, write_config


@pytest.fixture
def prefect_server(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_SERVER_LEVEL": "WARNING"}
    env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the Prefect server did not start")
        yield {**env, "PREFECT_API_URL": url, "OPENAI_API_KEY": SECRET}
    finally:
        server.terminate()
        server.wait(timeout=30)


def prefect(env, *args, timeout=180):
    return subprocess.run([sys.executable, "-m", *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_a_deployment_registers_on_a_work_pool_and_a_worker_runs_it(tmp_path, fake_openai, prefect_server):
    source = write_parquet(tmp_path / "docs.parquet", {"id": [1, 2], "text": ["alpha", "beta"]})
    config = write_config(tmp_path, fake_openai, source)
    assert prefect(prefect_server, "prefect", "work-pool", "create", "embedpipe-test", "--type", "process").returncode == 0
    deployed = prefect(prefect_server, "flows.cli", "deploy", str(config), "--cron", "0 3 * * *", "--pool", "embedpipe-test", "--name", "nightly")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    inspect = prefect(prefect_server, "prefect", "deployment", "inspect", "embed-dataset/nightly")
    assert "0 3 * * *" in inspect.stdout and SECRET not in inspect.stdout
    assert prefect(prefect_server, "prefect", "deployment", "run", "embed-dataset/nightly").returncode == 0
    worker = prefect(prefect_server, "prefect", "worker", "start", "--pool", "embedpipe-test", "--run-once", timeout=300)
    assert worker.returncode == 0, worker.stdout[-2000:] + worker.stderr[-2000:]
    assert pq.read_table(tmp_path / "out").num_rows == 2


def test_prefect_yaml_deploys_each_flow_with_parameters_it_accepts():
    import importlib
    import inspect
    from pathlib import Path

    import yaml

    from pipeline.config import Config

    project = Path(__file__).resolve().parents[2]
    spec = yaml.safe_load((project / "prefect.yaml").read_text())
    for deployment in spec["deployments"]:
        path, name = deployment["entrypoint"].split(":")
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)
        accepted = inspect.signature(flow.fn).parameters
        assert set(deployment["parameters"]) <= set(accepted), deployment["name"]
        Config.model_validate(deployment["parameters"]["config"])  # a typo fails here, not at 3 am


def test_the_key_can_come_from_a_prefect_secret_block(tmp_path, fake_openai, prefect_server):
    source = write_parquet(tmp_path / "docs.parquet", {"id": [1], "text": ["alpha"]})
    config = write_config(tmp_path, fake_openai, source)
    env = {k: v for k, v in prefect_server.items() if k != "OPENAI_API_KEY"}
    saved = subprocess.run(
        [sys.executable, "-c", f"from prefect.blocks.system import Secret; Secret(value={SECRET!r}).save('openai-key')"], env=env, capture_output=True, text=True, timeout=120)
    assert saved.returncode == 0, saved.stderr
    run = prefect(env, "flows.cli", "run", str(config), "--set", "embedding.api_key_block=openai-key")
    assert run.returncode == 0, run.stderr[-2000:]
    assert set(fake_openai.authorizations) == {f"Bearer {SECRET}"} and SECRET not in run.stdout + run.stderr
