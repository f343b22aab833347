"""Incremental runs: recognise input files unchanged since the last run and keep their output.

The manifest records, for every part, the input partition it came from and that file's size,
modification time and a content fingerprint (a hash of its first and last 64 KiB), and a key
of the settings that shape the output. A later run with the same settings keeps each part
whose input still matches, without reading its text, and embeds only what is new or changed.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from pipeline import __version__
from pipeline.config import Config
from pipeline.providers import provider_class
from pipeline.sinks.parquet import MANIFEST
from pipeline.sources.partitions import Partition

_EDGE = 64 * 1024


@functools.lru_cache(maxsize=4096)
def _edges(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        digest.update(handle.read(_EDGE))
        if size > 2 * _EDGE:
            handle.seek(-_EDGE, 2)
        digest.update(handle.read(_EDGE))
    return digest.hexdigest()[:32]


def fingerprint(file: Path) -> dict:
    """Path, size, modification time and a hash of the file's first and last 64 KiB."""
    stat = file.stat()
    return {
        "path": str(file),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "edges_sha256": _edges(file, stat.st_size, stat.st_mtime_ns),
    }


def run_key(settings: dict, files: list[Path]) -> str:
    """A short hash of the settings and of the input files as they are now: names the staging
    directory, so only an attempt of the very same run resumes from it."""
    blob = json.dumps({"settings": settings, "input": [fingerprint(f) for f in files]}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def part_source(partition: Partition) -> dict:
    """What the manifest records of a part's input."""
    return {**fingerprint(partition.file), "row_groups": list(partition.row_groups) if partition.row_groups else None}


def settings_key(config: Config) -> str:
    """A hash of every setting that shapes the output: equal keys mean reusable parts."""
    shaping = {
        "embedding": config.embedding.model_dump(include={"provider", "model", "dimensions"}),
        "endpoint": provider_class(config.embedding.provider).endpoint(config.embedding),  # the server actually used
        "chunking": config.chunking.model_dump(),
        "source": config.source.model_dump(include={"id_column", "text_column", "text_template"}),
        "vector_column": config.output.vector_column,
        "version": __version__,
    }
    stored = config.output.model_dump(include={"vector_dtype", "dimensions_truncate"})
    if stored != {"vector_dtype": "float32", "dimensions_truncate": None}:  # a float32 output keeps the key it had
        shaping["vectors"] = stored
    if made_with := provider_class(config.embedding.provider).shaping_settings(config.embedding):
        shaping["made_with"] = made_with  # only where set: outputs made before it keep their key
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


class PreviousOutput:
    """The last published run's parts, by the input they came from; empty when its settings differ."""

    def __init__(self, output: str | Path, settings_key: str):
        self.output = Path(output)
        try:
            manifest = json.loads((self.output / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = {}
        same = manifest.get("settings_key") == settings_key
        files = manifest.get("files", []) if same else []
        self.vectors: dict[str, dict] = manifest.get("vectors", {}) if same else {}  # each vector column's record
        self._parts = {_key(f["source"]): self.output / f["name"] for f in files if f.get("source")}
        self._files = {_key(f["source"])[:4] for f in files if f.get("source")}
        self._by_range = {(k[0], k[4]): path for k, path in self._parts.items()}

    def covers(self, files: list[Path]) -> bool:
        """Whether the last output came from exactly these files, all unchanged."""
        return bool(self._files) and len(files) == len({k[0] for k in self._files}) and all(map(self.unchanged, files))

    def unchanged(self, file: Path) -> bool:
        """Whether `file` is exactly as it was when the last run read it."""
        return _key({**fingerprint(file), "row_groups": None})[:4] in self._files

    def part_for(self, partition: Partition) -> Path | None:
        """The previous part holding this partition's output, if its input is unchanged."""
        path = self._parts.get(_key(part_source(partition)))
        return path if path is not None and path.exists() else None

    def earlier_part(self, partition: Partition) -> Path | None:
        """The previous part read from the same file and row groups, whether or not the file
        has changed since: its rows are compared with the new ones by position."""
        path = self._by_range.get((str(partition.file), tuple(partition.row_groups or ())))
        return path if path is not None and path.exists() else None


def _key(source: dict) -> tuple:
    return (
        source["path"],
        source["size"],
        source["mtime_ns"],
        source["edges_sha256"],
        tuple(source["row_groups"] or ()),
    )
