"""A run's threads share one malloc arena, and Arrow allocates through malloc, unless the user chose otherwise."""

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
    [({}, True, 1), ({"MALLOC_ARENA_MAX": "8"}, False, 8), ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=8"}, False, 8)],
)
def test_threads_share_one_arena_unless_the_environment_sets_a_limit(env, set_here, most_arenas):
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's arenas: Linux only")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, env={"PATH": "", **env}, check=True
    )
    arenas = done.stderr.count("Arena ")
    assert done.stdout.strip() == str(set_here)
    assert 1 <= arenas <= most_arenas
    if not set_here:
        assert arenas > 1  # the test tells the two apart: eight threads took more than one


ARROW_SCRIPT = """
import pyarrow as pa
from pipeline.run.memory import arrow_from_malloc
print(arrow_from_malloc(), pa.default_memory_pool().backend_name)
"""


@pytest.mark.parametrize(
    "env, expected",
    [({}, "True system"), ({"ARROW_DEFAULT_MEMORY_POOL": "mimalloc"}, "False mimalloc")],
)
def test_arrow_allocates_through_malloc_unless_the_environment_names_a_pool(env, expected):
    env = {"PATH": "", **env}
    done = subprocess.run(
        [sys.executable, "-c", ARROW_SCRIPT], capture_output=True, text=True, cwd=ROOT, env=env, check=True
    )
    assert done.stdout.strip() == expected


# As `embedpipe` starts: its package `flows` imported before the libraries that start threads.
IMPORTS_SCRIPT = """
import ctypes, importlib, sys, threading
for name in sys.argv[1].split(","):
    importlib.import_module(name)
def work():
    keep = [bytearray(200_000) for _ in range(50)]
threads = [threading.Thread(target=work) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
ctypes.CDLL(None).malloc_stats()
"""


@pytest.mark.parametrize(
    "imports, one_arena",
    [("flows,pyarrow,polars", True), ("pyarrow,polars,flows", False)],  # the second: a limit set too late
)
def test_importing_flows_first_keeps_the_threads_of_later_imports_in_one_arena(imports, one_arena):
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's arenas: Linux only")
    env = {"PATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS_SCRIPT, imports], capture_output=True, text=True, cwd=ROOT, env=env, check=True
    )
    assert (done.stderr.count("Arena ") == 1) == one_arena
