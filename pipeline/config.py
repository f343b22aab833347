"""Run configuration: YAML validated by pydantic, unknown keys rejected, `--set` overrides."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from fnmatch import fnmatch
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError
from pipeline.providers.registry import provider_names
from pipeline.sinks.vector_dtypes import ENCODINGS


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceConfig(_Section):
    path: str
    id_column: str = "id"
    text_column: str | None = None
    text_template: str | None = None
    encoding: str = "utf-8"  # of text-based files (CSV, JSON Lines), e.g. latin-1; Parquet is always UTF-8
    partition_rows: int = 1_000_000  # a larger Parquet file is split at row groups
    parallel_partitions: int = 2  # partitions in flight at once; one reads its rows at a time

    @model_validator(mode="after")
    def _one_text_spec(self) -> SourceConfig:
        if self.text_column and self.text_template:
            raise ValueError("set text_column or text_template, not both")
        if not self.text_column and not self.text_template:
            self.text_column = "text"
        if self.partition_rows < 1 or self.parallel_partitions < 1:
            raise ValueError("partition_rows and parallel_partitions must be at least 1")
        return self


class ChunkingConfig(_Section):
    max_tokens: int = 512
    overlap_tokens: int = 64

    @model_validator(mode="after")
    def _sane(self) -> ChunkingConfig:
        if self.max_tokens < 8:
            raise ValueError("max_tokens must be at least 8")
        if not 0 <= self.overlap_tokens < self.max_tokens:
            raise ValueError("overlap_tokens must be >= 0 and smaller than max_tokens")
        return self


class EmbeddingConfig(_Section):
    provider: str = "local"  # a name in pipeline/providers/registry.py, or one a package registers
    model: str = "all-MiniLM-L6-v2"
    dimensions: int | None = None
    base_url: str | None = None
    deployment: str | None = None  # azure-openai: the deployment name (required); model names what is behind it
    api_version: str = "2024-10-21"  # azure-openai: sent as ?api-version=
    api_key_env: str = "OPENAI_API_KEY"
    api_key_block: str | None = None  # name of a Prefect Secret block holding the key
    requests_per_minute: int | None = None  # None: the server's, from its x-ratelimit-limit-* headers; a value is a cap
    tokens_per_minute: int | None = None
    max_concurrency: int | None = None  # requests in flight at once; None: as many as the budget lets leave, up to 32
    request_timeout_seconds: float = 60.0
    max_attempts: int = 6  # per request, for 429, 5xx, timeouts and malformed answers
    batch_size: int | None = None  # texts per request; None = the provider's maximum
    max_cost_usd: float | None = None  # a run estimated to cost more stops before its first call
    price_table: str | None = None  # YAML of model: {sync, batch} USD per 1M tokens; None = configs/prices.yaml
    task_runner: Literal["threads", "dask"] = "threads"  # where partitions run: this process, or a Dask cluster
    dask_address: str | None = (
        None  # a running Dask scheduler; None = a local cluster of source.parallel_partitions processes
    )
    # openai-batch only
    batch_max_enqueued_tokens: int = 3_000_000  # tokens in flight at once; more goes in waves
    batch_max_inputs_per_file: int = 50_000
    batch_poll_seconds: float = 15.0  # first poll interval; backs off to a minute
    batch_max_attempts: int = 3  # per text, through the Batch API
    batch_fallback_sync: bool = False  # finish what batches could not through the sync endpoint
    # local only
    backend: str = "auto"  # auto | torch | onnx | onnx-int8 | static (pipeline/providers/local/backends.py)
    device: str | list[str] = "auto"  # auto | cpu | cuda | cuda:N, or a list of cuda:N: one process each
    backend_min_cosine: float = 0.99  # auto picks a backend only if its mean cosine to torch's reaches this
    models_path: str | None = None  # exported and distilled models; None: beside the cache, <cache.path>/models

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, name: str) -> str:
        if name not in provider_names():
            raise ValueError(
                f"use one of {', '.join(provider_names())} (or install the package that registers {name!r})"
            )
        return name

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, name: str) -> str:
        from pipeline.providers.local.backends import backend_names  # the local package imports this module

        if name != "auto" and name not in backend_names():
            raise ValueError(f"use auto or one of {', '.join(backend_names())}")
        return name

    @field_validator("device")
    @classmethod
    def _device_spelling(cls, device: str | list[str]) -> str | list[str]:
        for name in [device] if isinstance(device, str) else device:
            if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
                raise ValueError(f"{name!r}: use auto, cpu, cuda or cuda:N (or a list of cuda:N)")
        return device

    @model_validator(mode="after")
    def _positive(self) -> EmbeddingConfig:
        for name in (
            "requests_per_minute",
            "tokens_per_minute",
            "max_concurrency",
            "max_attempts",
            "batch_size",
            "dimensions",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1")
        if not -1 <= self.backend_min_cosine <= 1:
            raise ValueError("backend_min_cosine must lie between -1 and 1")
        return self


class CacheConfig(_Section):
    path: str = ".embedpipe/cache"
    # An fsspec URL (s3://bucket/prefix, gs://, az://, a directory) every host reads and fills behind its
    # local cache: a text paid for on one host is found there by the others. null: this machine's cache only.
    shared_path: str | None = None


class IcebergConfig(_Section):
    catalog_uri: str  # sqlite:///path/catalog.db, postgresql://..., or http(s):// for a REST catalog
    warehouse: str  # where data files go: a directory or a URL (s3://...)
    table: str  # namespace.table

    @field_validator("table")
    @classmethod
    def _qualified(cls, name: str) -> str:
        if "." not in name.strip(".") or not all(name.split(".")):
            raise ValueError(f"name it namespace.table, e.g. docs.{name or 'vectors'}")
        return name


class OutputConfig(_Section):
    path: str = "out/docs"
    vector_column: str = "embedding"
    chunks_path: str | None = None  # set to also write the chunk-level table there
    delta_path: str | None = None  # set to also write the output as a Delta Lake table there
    vector_dtype: str = "float32"  # a name in pipeline/sinks/vector_dtypes.py: float32 | float16 | int8 | binary
    dimensions_truncate: int | None = None  # keep the first N dimensions, re-normalised (Matryoshka models only)
    iceberg: IcebergConfig | None = None  # also commit the output to this Iceberg table

    @field_validator("vector_dtype")
    @classmethod
    def _known_dtype(cls, name: str) -> str:
        if name not in ENCODINGS:
            raise ValueError(f"use one of {', '.join(ENCODINGS)}")
        return name

    @model_validator(mode="after")
    def _separate(self) -> OutputConfig:
        if self.dimensions_truncate is not None and self.dimensions_truncate < 1:
            raise ValueError("dimensions_truncate must be at least 1")
        if self.chunks_path:
            rows, chunks = Path(self.path).resolve(), Path(self.chunks_path).resolve()
            if rows == chunks or rows in chunks.parents or chunks in rows.parents:
                raise ValueError("chunks_path must lie outside path, and path outside chunks_path")
        return self


class Config(_Section):
    source: SourceConfig
    chunking: ChunkingConfig = ChunkingConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    cache: CacheConfig = CacheConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _output_apart_from_source(self) -> Config:
        for key in ("path", "chunks_path"):
            problem = nesting_problem(self.source.path, getattr(self.output, key), f"output.{key}")
            if problem:
                raise ValueError(problem)
        if self.embedding.models_path is None:  # kept beside the cache, like the batch ledgers
            self.embedding.models_path = str(Path(self.cache.path) / "models")
        return self


_GLOB_CHARACTERS = "*?["
_FIRST_PART = "part-00000.parquet"  # the name of an output's first part file


def nesting_problem(source: str, output: str | None, output_key: str) -> str | None:
    """Why `output` may not be written where it is, or None. A file or directory source must not
    hold `output`, nor lie inside it; a glob source must not match the output's part files (nor,
    if recursive, reach below the output), nor read from a folder inside the output."""
    if not output or _is_url(source) != _is_url(output):  # a local path and a URL never nest
        return None
    where = _glob_problem if _is_glob(source) else _path_problem
    problem = where(source, output, output_key)
    return problem and f"{problem}: the next run would read its own output; put {output_key} elsewhere"


def _path_problem(source: str, output: str, output_key: str) -> str | None:
    """How a file or directory `source` and `output` nest, or None."""
    source_root, output_root = _root(source), _root(output)
    if source_root == output_root:
        return f"{output_key} {output} and source.path {source} are the same place"
    if _inside(output_root, source_root):
        return f"{output_key} {output} lies inside source.path {source}"
    if _inside(source_root, output_root):
        return f"source.path {source} lies inside {output_key} {output}"
    return None


def _glob_problem(source: str, output: str, output_key: str) -> str | None:
    """How a glob `source` would meet `output`, or None."""
    folder, pattern = _glob_folder_and_pattern(source)
    output_root = _root(output)
    if _glob_reads(pattern, output_root):
        return f"the glob source.path {source} would read {output_key} {output}'s files"
    if folder == output_root:
        return f"{output_key} {output} and source.path {source} are the same place"
    if _inside(folder, output_root):
        return f"source.path {source} lies inside {output_key} {output}"
    return None


def _glob_reads(pattern: list[str], output_root: str) -> bool:
    """Whether the glob `pattern` (absolute, split at '/') would read files written under
    `output_root`: a recursive one reaching into it, or any one matching its part files."""
    output_names = output_root.split("/")
    if "**" in pattern:
        above = pattern[: pattern.index("**")]
        return _matches(above, output_names[: len(above)])
    return _matches(pattern, output_names + [_FIRST_PART])


def _matches(patterns: list[str], names: list[str]) -> bool:
    """Whether `names` match `patterns` one segment each, as a glob matches (a '*' never crosses a '/')."""
    return len(patterns) == len(names) and all(fnmatch(name, part) for name, part in zip(names, patterns))


def _glob_folder_and_pattern(source: str) -> tuple[str, list[str]]:
    """The folder a glob reads from (the directory before its first glob character, made absolute),
    and the whole glob made absolute and split at '/'."""
    cut = min(i for i in map(source.find, _GLOB_CHARACTERS) if i >= 0)
    folder = os.path.dirname(source[:cut])
    rest = [name for name in source[len(folder) :].split("/") if name not in ("", ".")]
    folder = _root(folder or ".")
    return folder, folder.rstrip("/").split("/") + rest


def _is_glob(path: str) -> bool:
    return any(character in path for character in _GLOB_CHARACTERS)


def _is_url(path: str) -> bool:
    return "://" in path


def _root(path: str) -> str:
    """Where `path` reads or writes: URLs stay strings (compared by prefix, and segment by segment
    against a glob); local paths are made absolute."""
    return path.rstrip("/") if _is_url(path) else str(Path(path).expanduser().resolve())


def _inside(inner: str, outer: str) -> bool:
    return inner.startswith(outer.rstrip("/") + "/")


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read `path`, apply `section.key=value` overrides, validate; raise ConfigError on any problem."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path} is not valid UTF-8 YAML: {first_line(exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must be a mapping of sections")
    for item in overrides:
        apply_override(raw, item)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_validation_error(exc)}") from None


def apply_override(raw: dict, item: str) -> None:
    """Apply one `section.key=value` to the raw mapping; the value is parsed as YAML."""
    key, sep, value = item.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. embedding.model=text-embedding-3-small")
    if raw.get(parts[0]) is None:  # absent, or written as an empty `section:`
        raw[parts[0]] = {}
    if not isinstance(raw[parts[0]], dict):
        raise ConfigError(f"--set {item!r}: {parts[0]} is not a section")
    try:
        raw[parts[0]][parts[1]] = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML: {first_line(exc)}") from None


def describe_validation_error(exc: ValidationError) -> str:
    """The first problem pydantic found, as `section.key: message`."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "config"
    if error["type"] == "extra_forbidden":
        return f"unknown key {where}"
    if error["type"] == "missing":
        return f"missing key {where}"
    if error["type"] == "value_error":  # our own validators' messages, without pydantic's prefix
        message = str(error["ctx"]["error"])
        return f"{where}: {message}" if error["loc"] else message
    return f"{where}: {error['msg']}"


def first_line(exc: Exception) -> str:
    """An exception's first line, for one-line errors."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
