"""Ctrl-C and `kill` during `embedpipe run`, as a user sends them: the real command line in a
subprocess, Prefect's temporary server, a loopback server that records when each request arrived."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import write_run_yaml
from tests.fakes.openai_server import FakeOpenAI

TEXTS = [f"ticket {i}: the printer on floor {i % 9} jams again" for i in range(600)]
ON_THE_WIRE = 0.3  # a request written just before the signal may still arrive this much later on a loaded machine


def embedpipe(config: Path, prefect_home: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "OPENAI_API_KEY": "sk-test"}
    env.pop("PREFECT_API_URL", None)
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(config)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def wait_for(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# how the signal is sent -> (signals, to the process group, exit status)
SIGNALS = {
    "Ctrl-C: SIGINT to the process group": ([signal.SIGINT], True, 130),
    "kill: SIGTERM to the process": ([signal.SIGTERM], False, 143),
}


@pytest.mark.parametrize("how", SIGNALS)
def test_a_signal_stops_sending_at_once_keeps_what_was_paid_and_exits_with_one_line(tmp_path, prefect_home, how):
    signums, to_group, status = SIGNALS[how]
    with FakeOpenAI(latency=0.5) as server:
        config = write_run_yaml(tmp_path, server, TEXTS, batch_size=20, max_concurrency=2)
        process = embedpipe(config, prefect_home, start_new_session=True)
        wait_for(lambda: len(server.admitted) >= 6, 180)
        prefect_servers = children(process.pid)
        signalled = time.monotonic()
        (os.killpg if to_group else os.kill)(process.pid, signums[0])
        _, stderr = process.communicate(timeout=60)
        took = time.monotonic() - signalled
        late = [t - signalled for t in server.admitted if t > signalled + ON_THE_WIRE]
        assert process.returncode == status, stderr
        assert took < 10, took
        assert late == [], "requests left after the signal"
        assert "Traceback" not in stderr and "Error" not in stderr, stderr
        assert stderr.strip().splitlines()[-1].startswith(f"embedpipe: interrupted by {signums[0].name}"), stderr
        assert prefect_servers and not any(alive(pid) for pid in prefect_servers), "Prefect's server outlived the run"
        assert list((tmp_path / "out").glob(".staging-*")), "staging is kept for the resume"
        assert not list((tmp_path / "out").rglob("*.tmp")), "no half-written part is left"
        paid = len(server.calls)
        rerun = embedpipe(config, prefect_home)
        _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    assert max(server.calls.values()) == 1, "an answer paid for before the signal was paid for again"
    assert paid > 0 and pq.read_table(tmp_path / "out").num_rows == len(TEXTS)


def test_a_second_signal_exits_at_once_without_waiting_for_a_hanging_request(tmp_path, prefect_home):
    with FakeOpenAI(latency=0.2) as server:
        server.delays.extend([0.0, 60.0])  # the second request hangs: the first signal would wait for it
        config = write_run_yaml(tmp_path, server, TEXTS, batch_size=20, max_concurrency=2)
        process = embedpipe(config, prefect_home, start_new_session=True)
        wait_for(lambda: len(server.admitted) >= 3, 180)  # the hanging one in flight, and one after it
        prefect_servers = children(process.pid)
        os.killpg(process.pid, signal.SIGINT)
        time.sleep(0.5)
        second = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        took = time.monotonic() - second
    assert process.returncode == 130, stderr
    assert took < 3, took
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("embedpipe: interrupted"), stderr
    assert not any(alive(pid) for pid in prefect_servers)
