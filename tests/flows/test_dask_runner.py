"""`embedding.task_runner: dask`: the embed flow on a local multi-process Dask cluster, run as
a user runs it, against a loopback server that enforces the account's rate limit."""

import signal
import threading
from urllib.parse import urlsplit

import psutil
import pyarrow.parquet as pq
import pytest

from tests.conftest import write_parquet
from tests.fakes.openai_server import FakeOpenAI
from tests.flows.test_cli import SECRET, embedpipe, write_config

SHARED = [f"in both files {i}" for i in range(5)]
RPM = 120  # the server banks 120 requests and refills 2 a second


def two_files(tmp_path):
    for name in ("a", "b"):
        texts = [f"only in {name} {i}" for i in range(65)] + SHARED
        write_parquet(tmp_path / "in" / f"{name}.parquet", {"id": [f"{name}{i}" for i in range(70)], "text": texts})
    return tmp_path / "in"


def cluster_config(tmp_path, server, *extra: str):
    path = write_config(tmp_path, server, two_files(tmp_path))
    lines = ["embedding.task_runner=dask", "embedding.batch_size=1", f"embedding.requests_per_minute={RPM}", "source.parallel_partitions=2", *extra]
    return ["run", str(path), *(arg for line in lines for arg in ("--set", line))]


def test_two_worker_processes_together_stay_within_the_rate_limit(tmp_path, prefect_home):
    # 135 one-text requests against a bank of 120: two workers each spending the whole
    # limit would burst 135 at once and meet 429s; each with half of it meets none.
    with FakeOpenAI(rpm=RPM) as server:
        result = embedpipe(cluster_config(tmp_path, server), prefect_home, tmp_path)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        t0 = server.admitted[0]
        assert server.rate_limited == 0, f"refused {[(round(t - t0, 3), round(l, 2)) for t, _, l, _ in server.refusals]} admitted {[round(t - t0, 3) for t in server.admitted]}"
        assert server.requests == 135
        assert max(server.calls.values()) == 1  # a text both files hold is paid once
    assert "Dask: 2 worker processes, 2 threads; the rate limit is shared by the processes drawing on it" in output
    assert "sent           135 chunks, " in result.stdout and "distinct texts 135 in 135 chunks" in result.stdout
    assert [pq.read_table(tmp_path / "out" / f"part-0000{i}.parquet").num_rows for i in (0, 1)] == [70, 70]
    for noise in ("Traceback", "Error flushing", "telemetry", "Starting temporary server on", "| distributed.", " - distributed."):
        assert output.count(noise) <= (1 if noise == "Starting temporary server on" else 0), output  # one server: the flow's
    assert SECRET not in output


@pytest.mark.parametrize("fault, message", [
    ("refused key", "the API key was refused (401)"),
    ("no scheduler", "embedding.dask_address tcp://127.0.0.1:9: cannot reach the Dask scheduler"),
])
def test_a_failure_on_the_cluster_is_one_line_and_publishes_nothing(tmp_path, prefect_home, fake_openai, monkeypatch, fault, message):
    monkeypatch.setenv("DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT", "3s")  # not the default 30
    extra = ["embedding.dask_address=tcp://127.0.0.1:9"] if fault == "no scheduler" else []
    if fault == "refused key":
        fake_openai.fail_next(401, "invalid_api_key", times=100)
    result = embedpipe(cluster_config(tmp_path, fake_openai, *extra), prefect_home, tmp_path)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr + result.stdout
    assert not list((tmp_path / "out").glob("*.parquet"))


def kill_a_worker_of(server: FakeOpenAI, after: int, done: threading.Event) -> None:
    """SIGKILL the first process holding a connection to `server` once it answered `after` requests."""
    port = urlsplit(server.base_url).port
    while not done.wait(0.01):
        if server.requests >= after:
            for connection in psutil.net_connections(kind="tcp"):
                if connection.raddr and connection.raddr.port == port and connection.pid:
                    psutil.Process(connection.pid).send_signal(signal.SIGKILL)
                    return


def test_a_partition_whose_worker_dies_once_too_often_is_one_line(tmp_path, prefect_home, monkeypatch):
    monkeypatch.setenv("DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES", "0")  # the first death is one too many
    with FakeOpenAI(latency=0.05) as server:
        done = threading.Event()
        killer = threading.Thread(target=kill_a_worker_of, args=(server, 3, done))
        killer.start()
        try:
            args = cluster_config(tmp_path, server, "embedding.batch_size=5", "embedding.requests_per_minute=6000")
            result = embedpipe(args, prefect_home, tmp_path)
        finally:
            done.set()
            killer.join()
    assert result.returncode != 0
    assert "see those workers' logs (out of memory?), then run again" in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
