"""A disk that fills mid-run, for real: the output or the cache on a small tmpfs, mounted in a
user and mount namespace of the test's own (`unshare -rm`), with `embedpipe run` inside it."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_run_yaml
from tests.fakes.openai_server import FakeOpenAI

TEXTS = [f"row {i}: a complaint about invoice {i * 7919 % 10007}" for i in range(600)]
DIMENSIONS = 256  # a kilobyte a vector: 600 of them fill a 256 KB disk

pytestmark = pytest.mark.skipif(
    shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0,
    reason="needs user namespaces (unshare -rm) to mount a small tmpfs",
)


def run_twice_on_a_small_disk(disk: Path, config: Path, prefect_home: Path) -> list[str]:
    """`embedpipe run` with `disk` a 256 KB tmpfs, then with it grown to 64 MB: each run's exit
    status and stderr, and the temporary files left on the disk between the two."""
    disk.mkdir(parents=True, exist_ok=True)
    run = f"{sys.executable} -m flows.cli run {config}"
    script = (
        f"mount -t tmpfs -o size=256k tmpfs {disk} || exit 97\n"
        f"{run} 2>&1; echo \"@exit $?\"\n"
        f"find {disk} -name '*.tmp' | sed 's/^/@tmp /'\n"
        f"mount -o remount,size=64m {disk}\n"
        f"{run} 2>&1; echo \"@exit $?\"\n"
    )
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "OPENAI_API_KEY": "sk-test"}
    env.pop("PREFECT_API_URL", None)
    command = ["unshare", "-rm", "sh", "-c", script]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode != 97, result.stderr
    return result.stdout.split("@exit ")


# what fills up -> what the one line says
FULL = {
    "output": ("out", r"out: the disk is full \(part-00000.parquet needs about [\d.]+ MB\)"),
    "cache": ("cache", r"cache.path .*cache: the disk is full"),
}


@pytest.mark.parametrize("what", FULL)
def test_a_full_disk_is_one_line_leaves_no_tmp_and_the_rerun_pays_only_what_was_lost(tmp_path, prefect_home, what):
    folder, message = FULL[what]
    with FakeOpenAI(dimensions=DIMENSIONS) as server:
        config = write_run_yaml(tmp_path, server, TEXTS, batch_size=50, max_concurrency=2)
        first, rest, second = run_twice_on_a_small_disk(tmp_path / folder, config, prefect_home)
    status, rest = rest.split("\n", 1)
    assert status == "2", first
    lines = [line for line in first.splitlines() if line.startswith("embedpipe: error:")]
    assert len(lines) == 1 and re.search(message, lines[0]), first
    assert "Traceback" not in first, first
    assert "@tmp" not in rest, "a temporary file was left on the full disk"
    assert second.startswith("0"), rest
    paid_twice = sum(n - 1 for n in server.calls.values())
    in_flight = 2 * 50  # max_concurrency requests of batch_size texts
    assert paid_twice <= in_flight, f"{paid_twice} texts paid twice: more than were in flight when the disk filled"
    assert len(server.calls) == len(TEXTS)
