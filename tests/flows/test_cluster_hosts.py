"""embedpipe on a Dask cluster across hosts, on one machine: the scheduler and two workers each in
a network namespace of their own, sharing no local directory; input, staging and output on a
local S3 (moto's server), vectors from the loopback OpenAI server. One worker is killed mid-run."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.fakes.openai_server import FakeOpenAI
from tests.flows.cluster_hosts import REPO, Hosts, namespaces_unavailable, start_prefect_server, stop

SECRET = "sk-test-cluster-never-print-me"
FILES, ROWS = 6, 40
SHARED = [f"a text every file holds {i}" for i in range(4)]
RPM = 600  # the account's: the server banks 600 requests and refills 10 a second


def texts_of(file: int) -> list[str]:
    return [f"file {file} row {i}: the printer on floor {i % 7} is jammed" for i in range(ROWS - len(SHARED))] + SHARED


@pytest.fixture(scope="module")
def hosts_or_skip():
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(f"no hosts on this machine: {reason}")


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def put_inputs(fs, bucket: str) -> None:
    for file in range(FILES):
        buffer = io.BytesIO()
        ids = [f"f{file}-{i}" for i in range(ROWS)]
        pq.write_table(pa.table({"id": ids, "text": texts_of(file)}), buffer, row_group_size=ROWS)
        fs.pipe_file(f"{bucket}/in/part{file}.parquet", buffer.getvalue())


def read_output(fs, url: str) -> pa.Table:
    manifest = json.loads(fs.cat_file(f"{url}/_manifest.json"))
    return pa.concat_tables(pq.read_table(io.BytesIO(fs.cat_file(f"{url}/{f['name']}"))) for f in manifest["files"])


def kill_when_busy(hosts: Hosts, server: FakeOpenAI, after: int, killed: list[str], stop_watching: threading.Event):
    """SIGKILL the first worker host the server has answered `after` requests from: mid-partition."""
    address_of = {name: address for name, address in hosts.addresses.items() if name.startswith("worker")}
    while not stop_watching.wait(0.02):
        for name, address in address_of.items():
            if server.peers[address] >= after:
                hosts.kill_worker(name)
                killed.append(name)
                return


def test_two_worker_hosts_one_killed_mid_run_write_every_row_once(tmp_path, hosts_or_skip, monkeypatch):
    from moto.server import ThreadedMotoServer

    from pipeline.remote import filesystem

    bridge = Hosts(tmp_path / "hosts", {})
    with bridge:
        host = bridge.host_address
        s3_server = ThreadedMotoServer(ip_address=host, port=free_port(host), verbose=False)
        s3_server.start()
        api_port = free_port(host)
        prefect = start_prefect_server(tmp_path / "prefect", host, api_port)
        try:
            with FakeOpenAI(host=host, rpm=RPM, latency=0.05) as server:
                env = {
                    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_ENDPOINT_URL": f"http://{host}:{s3_server._server.server_port}", "CLUSTER_KEY": SECRET,
                    "PREFECT_API_URL": f"http://{host}:{api_port}/api", "DASK_DISTRIBUTED__LOGGING__DISTRIBUTED": "warning",
                }  # fmt: skip
                bridge.env = env
                for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
                    monkeypatch.setenv(name, env[name])
                fs, _ = filesystem("s3://x")
                bucket = f"bucket-{uuid.uuid4().hex[:12]}"
                fs.mkdir(bucket)
                put_inputs(fs, bucket)
                bridge.start_scheduler()
                bridge.add_worker("worker-a")
                bridge.add_worker("worker-b")
                bridge.wait_for_workers(2)
                client = tmp_path / "client"
                client.mkdir()
                (client / "run.yaml").write_text(
                    f"source:\n  path: s3://{bucket}/in\n  parallel_partitions: 2\n"
                    f"embedding:\n  provider: openai\n  model: text-embedding-3-small\n  dimensions: 16\n"
                    f"  base_url: {server.base_url}\n  api_key_env: CLUSTER_KEY\n  batch_size: 4\n  task_runner: dask\n"
                    f"  dask_address: {bridge.scheduler_address}\n"
                    f"output:\n  path: s3://{bucket}/out\n"
                )
                killed: list[str] = []
                stop_watching = threading.Event()
                watcher = threading.Thread(target=kill_when_busy, args=(bridge, server, 3, killed, stop_watching))
                watcher.start()
                try:
                    run = subprocess.run(
                        [sys.executable, "-m", "flows.cli", "run", "run.yaml"],
                        cwd=client,
                        env={**os.environ, **env, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(client / ".prefect")},
                        capture_output=True,
                        text=True,
                        timeout=120,
                    )
                finally:
                    stop_watching.set()
                    watcher.join()
                output = run.stdout + run.stderr
                logs = {name: bridge.log(name) for name in ("worker-a", "worker-b")}
                assert run.returncode == 0, output + json.dumps(logs, indent=1)[-6000:]
                table = read_output(fs, f"{bucket}/out")
                assert killed
        finally:
            stop(prefect)
            s3_server.stop()
    ids = table.column("id").to_pylist()
    assert sorted(ids) == sorted(f"f{file}-{i}" for file in range(FILES) for i in range(ROWS))
    assert table.column("embedding").null_count == 0
    assert SECRET not in output
