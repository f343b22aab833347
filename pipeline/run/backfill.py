"""Backfills over hive-style partitions (`date=2026-01-01/` directories), one run each.

Each partition directory is an ordinary run with its own output directory
(`<output.path>/date=2026-01-01/`), so a backfill resumes by skipping the partitions whose
output is already up to date, and an interrupted one finishes from its staged parts.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config
from pipeline.errors import SourceError
from pipeline.incremental.unchanged_files import PreviousOutput
from pipeline.remote import is_remote
from pipeline.sources.reader import resolve_files


def hive_partitions(
    root: str | Path, key: str, start: str | None = None, end: str | None = None
) -> list[tuple[str, Path]]:
    """(value, directory) of each `key=value` directory under `root`, sorted, with
    start <= value <= end (compared as text, which orders ISO dates)."""
    if is_remote(str(root)):
        raise SourceError(
            f"source.path {root}: a backfill reads {key}=... directories from a local path; object stores work with "
            "embedpipe run"
        )
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"source.path {root}: a backfill needs a directory of {key}=... partitions")
    found = sorted((d.name.split("=", 1)[1], d) for d in root.iterdir() if d.is_dir() and d.name.startswith(f"{key}="))
    chosen = [(value, d) for value, d in found if (start is None or value >= start) and (end is None or value <= end)]
    if not chosen:
        raise SourceError(
            f"source.path {root}: no {key}=... directories between {start or 'the first'} and {end or 'the last'}"
        )
    return chosen


def partition_config(config: Config, key: str, value: str, directory: Path) -> Config:
    """The run configuration for one partition: its directory in, its own directory out."""
    output = config.output.model_copy(
        update={
            "path": str(Path(config.output.path) / f"{key}={value}"),
            "chunks_path": str(Path(config.output.chunks_path) / f"{key}={value}")
            if config.output.chunks_path
            else None,
        }
    )
    return config.model_copy(
        update={"source": config.source.model_copy(update={"path": str(directory)}), "output": output}
    )


def up_to_date(config: Config, settings_key: str) -> bool:
    """Whether the partition's published output came from exactly its current files.
    (With a chunk table too, never: incremental reuse covers the rows table only.)"""
    if config.output.chunks_path:
        return False
    previous = PreviousOutput(config.output.path, settings_key)
    try:
        files = resolve_files(config.source.path)
    except SourceError:
        return False
    return previous.covers(files)


def plan_backfill(
    config: Config, key: str, start: str | None, end: str | None
) -> tuple[list[tuple[str, Config]], list[str]]:
    """The partitions to run, each with its config, and the values skipped as up to date."""
    from pipeline.run.steps import settings_key  # run imports the whole pipeline; keep this module light

    todo, skipped = [], []
    for value, directory in hive_partitions(config.source.path, key, start, end):
        partition = partition_config(config, key, value, directory)
        if up_to_date(partition, settings_key(partition)):
            skipped.append(value)
        else:
            todo.append((value, partition))
    return todo, skipped
