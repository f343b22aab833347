"""Prefect flows and the `embedpipe` command line: thin wrappers over `pipeline`."""

from pipeline.run.memory import allocate_for_a_run

allocate_for_a_run()  # before the command line or a flow imports pyarrow and polars: see pipeline/run/memory.py
