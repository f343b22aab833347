"""How a run's process allocates: its threads share one malloc arena, and Arrow's buffers come
from malloc too, not from an allocator of their own.

glibc gives a thread that allocates while others hold the arenas an arena of its own, up to 8 a
core, and each arena keeps the memory freed in it for its next allocations. A run's threads
(reading ahead, requests, pooling, the cache's writer and merges) each allocate batch-sized
arrays, so the resident memory grew with the run's length. 4 M rows, two partitions at once
(`benchmarks/scale.py`'s input): peak RSS of a cold run 838 -> 704 MB with two arenas, of a cached
one 671 -> 622 MB, in the same time within the noise (cold 67.7 and 64.5 s, cached 23.9 and 25.9 s).
One arena, not two (Arrow from malloc, four runs each way): 474-521 -> 415-476 MB cold, times
within the noise; the threads allocate holding the interpreter's lock, so one arena is not contended.

pyarrow's default pool (mimalloc in its wheels) keeps a heap for each thread that allocates
Arrow buffers and holds pages freed there for that thread's next ones: with the same run's
threads, 4 M rows peaked at 489-515 MB with it, 415-438 MB with the system allocator (1 M rows
367 -> 314 MB), in the same time.

A user's own `MALLOC_ARENA_MAX` (or `GLIBC_TUNABLES` arena_max) or `ARROW_DEFAULT_MEMORY_POOL`
is left as set. glibc settles its arena limit once, when a process first has more arenas than 8
a core, and threads started after a limit is set share the arenas there are already: importing
pyarrow makes a second, polars two more. So `flows` asks as it is imported, before the command
line or a flow imports either; `prepare_run` asks again for a run started from Python, where
they may be imported already (then the arenas are those imports made, not 8 a core).
"""

from __future__ import annotations

import ctypes
import os

ARENAS = 1  # the run's threads mostly wait on the network or hold the GIL: one arena is not contended
_M_ARENA_MAX = -8  # mallopt's parameter, from glibc's malloc.h


def share_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Ask glibc to have threads started from now on share `arenas` malloc arenas; whether it
    was asked (not off glibc, nor where the environment names a limit of its own)."""
    if "MALLOC_ARENA_MAX" in os.environ or "arena_max" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        process = ctypes.CDLL(None)
        process.gnu_get_libc_version  # noqa: B018  glibc only: musl and macOS have no such arenas
    except (OSError, AttributeError):
        return False
    return bool(process.mallopt(_M_ARENA_MAX, arenas))


def arrow_from_malloc() -> bool:
    """Have Arrow's buffers allocated from now on by the system allocator (glibc's malloc, in the
    run's shared arena); whether it was asked (not where `ARROW_DEFAULT_MEMORY_POOL` names a pool)."""
    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return False
    import pyarrow as pa  # here, not above: importing it starts a thread, which takes an arena of its own

    pa.set_memory_pool(pa.system_memory_pool())
    return True


def allocate_for_a_run() -> None:
    """Both of the above, before the run's threads start (and before pyarrow or polars is imported,
    where the caller can)."""
    share_malloc_arenas()
    arrow_from_malloc()
