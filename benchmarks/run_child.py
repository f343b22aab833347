"""One run of the pipeline in a fresh process, started the way `embedpipe run` starts one.

    .venv/bin/python -m benchmarks.run_child CONFIG.json

`flows` is imported first, as the command line imports it: it settles how the process allocates
(pipeline/run/memory.py) before pyarrow and polars are imported. Prints one JSON line: the run's
seconds, the process's CPU seconds, its peak RSS (VmHWM, KiB) and the run's stats.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import flows  # noqa: F401  as `embedpipe run` imports it: before pyarrow and polars
from benchmarks.proc import peak_rss_kib


def main(config_path: str) -> None:
    """Run the pipeline on the config at `config_path` and print its figures."""
    from pipeline.config import Config
    from pipeline.run.steps import run_pipeline

    config = Config.model_validate(json.loads(Path(config_path).read_text()))
    started = time.perf_counter()
    manifest = run_pipeline(config, api_key="sk-bench")
    seconds = time.perf_counter() - started
    peak_kib = peak_rss_kib()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime  # imports included: a second or two
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_kib": peak_kib, "stats": manifest["stats"]}))


if __name__ == "__main__":
    main(sys.argv[1])
