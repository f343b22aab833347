"""embedpipe on a Dask cluster across hosts, on one machine: the scheduler and two workers each in
a network namespace of their own, sharing no local directory; input, staging and output on a
local S3 (moto's server), vectors from the loopback OpenAI server. One worker is killed mid-run."""

from __future__ import annotations

import io
import json
import threading

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.fakes.openai_server import FakeOpenAI, fake_vector
from tests.flows.cluster_hosts import Cluster, cluster, namespaces_unavailable

SECRET = "sk-test-cluster-never-print-me"
FILES, ROWS, BATCH = 6, 40, 4  # 10 requests a partition
SHARED = [f"a text every file holds {i}" for i in range(4)]
RPM, WINDOW = 240, 5  # the account's: the server banks 20 requests and refills 4 a second; a run makes ~60


def texts_of(file: int) -> list[str]:
    return [f"file {file} row {i}: the printer on floor {i % 7} is jammed" for i in range(ROWS - len(SHARED))] + SHARED


def put_inputs(fs, bucket: str) -> dict[str, str]:
    """The input files in the bucket; returns each row's text by id."""
    expected = {}
    for file in range(FILES):
        ids = [f"f{file}-{i}" for i in range(ROWS)]
        buffer = io.BytesIO()
        pq.write_table(pa.table({"id": ids, "text": texts_of(file)}), buffer)
        fs.pipe_file(f"{bucket}/in/part{file}.parquet", buffer.getvalue())
        expected.update(zip(ids, texts_of(file)))
    return expected


def read_output(fs, url: str) -> pa.Table:
    manifest = json.loads(fs.cat_file(f"{url}/_manifest.json"))
    return pa.concat_tables(pq.read_table(io.BytesIO(fs.cat_file(f"{url}/{f['name']}"))) for f in manifest["files"])


def config_yaml(hosts: Cluster, server: FakeOpenAI) -> str:
    return (
        f"source:\n  path: s3://{hosts.bucket}/in\n"
        f"embedding:\n  provider: openai\n  model: text-embedding-3-small\n  dimensions: {server.dimensions}\n"
        f"  base_url: {server.base_url}\n  api_key_env: CLUSTER_KEY\n  batch_size: {BATCH}\n"
        f"  task_runner: dask\n  dask_address: {hosts.hosts.scheduler_address}\n"
        f"cache:\n  shared_path: s3://{hosts.bucket}/cache\n"  # one cache for all hosts
        f"output:\n  path: s3://{hosts.bucket}/out\n"
    )  # cache.path left relative, as by default: each host's is under its own working directory


def kill_when_busy(hosts: Cluster, server: FakeOpenAI, after: int, done: threading.Event):
    """SIGKILL the first worker host that the server has answered `after` requests of: mid-partition."""
    while not done.wait(0.01):
        for name in hosts.workers:
            if server.peers[hosts.address(name)] >= after:
                hosts.kill_worker(name)
                return


def partition_task_runs(api_url: str) -> dict[str, list[str]]:
    """The states of each embed-partition task run the Prefect API holds, by name."""
    runs: dict[str, list[str]] = {}
    for run in httpx.post(f"{api_url}/task_runs/filter", json={}).json():
        if run["name"].startswith("embed-partition-"):
            runs.setdefault(run["name"], []).append(run["state_type"])
    return runs


@pytest.fixture
def hosts(tmp_path):
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(f"no hosts on this machine: {reason}")
    with cluster(tmp_path) as made:
        yield made


def test_two_worker_hosts_one_killed_mid_partition_write_every_row_once(hosts):
    expected = put_inputs(hosts.fs, hosts.bucket)
    with FakeOpenAI(host=hosts.host_address, rpm=RPM, window=WINDOW, latency=0.05) as server:
        hosts.add_workers(2, CLUSTER_KEY=SECRET)
        done = threading.Event()
        watcher = threading.Thread(target=kill_when_busy, args=(hosts, server, 3, done))
        watcher.start()
        try:
            run = hosts.run_flow(config_yaml(hosts, server), CLUSTER_KEY=SECRET)
        finally:
            done.set()
            watcher.join()
    logs = "".join(hosts.hosts.log(name) for name in hosts.workers)
    assert run.returncode == 0, run.stdout + run.stderr + logs[-4000:]
    assert hosts.killed, "no worker was killed: the run ended before one got 3 answers"
    table = read_output(hosts.fs, f"{hosts.bucket}/out")
    ids = table.column("id").to_pylist()
    assert sorted(ids) == sorted(expected)  # every row once: none lost with the killed host, none twice
    vectors = table.column("embedding").to_pylist()
    assert all(np.allclose(v, fake_vector(expected[i], server.dimensions), atol=1e-6) for i, v in zip(ids, vectors))
    # the killed host's partition ran again elsewhere, and Prefect holds one completed run of each partition
    runs = partition_task_runs(hosts.env["PREFECT_API_URL"])
    assert runs == {f"embed-partition-{i}": ["COMPLETED"] for i in range(FILES)}
    assert sorted(p.rsplit("/", 1)[-1] for p in hosts.fs.ls(f"{hosts.bucket}/out", refresh=True)) == [
        "_manifest.json", *(f"part-{i:05d}.parquet" for i in range(FILES))
    ]  # the staged parts' prefix is gone once published
    survivor = hosts.live_workers[0]
    assert (hosts.hosts.root / survivor / ".embedpipe" / "cache").is_dir()  # its cache: its own disk
    assert SECRET not in run.stdout + run.stderr + logs
    # every text paid once, but for those the killed host was answered for and had not yet put in the shared tier
    killed = hosts.address(hosts.killed[0])
    paid_by_killed = {text for _, peer, texts in server.answered if peer == killed for text in texts}
    paid_twice = {text for text, times in server.calls.items() if times > 1}
    assert set(server.calls) == set(expected.values())
    assert paid_twice <= paid_by_killed and max(server.calls.values()) <= 2, sorted(paid_twice - paid_by_killed)
    # the hosts together stayed within the server's limits
    assert server.rate_limited <= server.requests / 100, server.refusals
