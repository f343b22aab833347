"""How a run's process allocates: a few malloc arenas shared by its threads, not one each.

glibc gives a thread that allocates while others hold the arenas an arena of its own, up to 8 a
core, and each arena keeps the memory freed in it for its next allocations. A run's threads
(reading ahead, requests, pooling, the cache's writer and merges) each allocate batch-sized
arrays, so the resident memory grew with the run's length. 4 M rows, two partitions at once
(`benchmarks/scale.py`'s input): peak RSS of a cold run 838 -> 704 MB, of a cached one 671 -> 622
MB, in the same time within the noise (cold 67.7 and 64.5 s, cached 23.9 and 25.9 s).
A user's own `MALLOC_ARENA_MAX` (or `GLIBC_TUNABLES` arena_max) is left as set.

glibc settles its limit once, when a process first has more arenas than 8 a core: asked after
that, it says yes and changes nothing. The command line asks first thing, before Prefect starts
its threads; `prepare_run` asks again for a run started from Python (the benchmarks', a user's).
"""

from __future__ import annotations

import ctypes
import os

ARENAS = 2  # the run's threads mostly wait on the network or hold the GIL: two arenas are not contended
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
