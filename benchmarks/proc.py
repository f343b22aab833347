"""What Linux says of this process: the benchmarks' one reading of /proc."""

from __future__ import annotations

from pathlib import Path


def peak_rss_kib() -> int:
    """This process's peak resident memory so far (VmHWM), in KiB. Not `ru_maxrss`: Linux carries
    that across exec from the forking parent."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
