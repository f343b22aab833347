"""A run's threads share a few malloc arenas, unless the user chose how many."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[3]
# Threads allocating at once in a fresh process: how many arenas glibc ends up with.
SCRIPT = """
import ctypes, sys, threading
from pipeline.run.memory import share_malloc_arenas
print(share_malloc_arenas())
barrier = threading.Barrier(8)
def work():
    barrier.wait()
    keep = [bytearray(200_000) for _ in range(50)]
threads = [threading.Thread(target=work) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
ctypes.CDLL(None).malloc_stats()  # to stderr: an "Arena N:" section each
"""


@pytest.mark.parametrize(
    "env, set_here, most_arenas",
    [({}, True, 2), ({"MALLOC_ARENA_MAX": "8"}, False, 8), ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=8"}, False, 8)],
)
def test_threads_share_two_arenas_unless_the_environment_sets_a_limit(env, set_here, most_arenas):
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's arenas: Linux only")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, env={"PATH": "", **env}, check=True
    )
    arenas = done.stderr.count("Arena ")
    assert done.stdout.strip() == str(set_here)
    assert 1 <= arenas <= most_arenas
    if not set_here:
        assert arenas > 2  # the test tells the two apart: eight threads took more than two
