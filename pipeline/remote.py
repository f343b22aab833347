"""Inputs and outputs on object stores (`s3://`, `gs://`, any fsspec URL), through a local mirror.

A run reads and writes local files only. Remote input files are fetched into the mirror, and
fetched again only when their size or ETag changes, so an incremental run still sees which
files are unchanged. The output is published locally as always, then copied up: parts first,
the manifest last. Every object is written whole, so a reader of the bucket sees whole files
and a manifest that vouches for the parts beside it. The mirror lies under `cache.path`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from pipeline.config import Config, first_line
from pipeline.errors import EmbedpipeError
from pipeline.sinks.parquet import MANIFEST
from pipeline.sources.formats import describe_suffixes, is_supported


def is_remote(path: str | None) -> bool:
    """Whether `path` is a URL of a remote file system (not a local path or file://)."""
    return bool(path) and "://" in str(path) and str(path).split("://", 1)[0] not in ("file", "local")


def localised(config: Config) -> tuple[Config, list[RemoteOutput]]:
    """`config` with each remote path replaced by its local mirror: inputs fetched, the last
    published output pulled. A run checks the outputs returned writable before its first call
    and pushes them after it publishes; an estimate only reads."""
    root = Path(config.cache.path) / "remote"
    source, output, outputs = config.source, config.output, []
    if is_remote(source.path):
        source = source.model_copy(update={"path": fetch_inputs(source.path, root / "inputs")})
    for key in ("chunks_path", "path"):  # pushed in this order: the rows table vouches for both
        url = getattr(output, key)
        if is_remote(url):
            outputs.append(RemoteOutput(url, root / "outputs"))
            outputs[-1].pull()
            output = output.model_copy(update={key: str(outputs[-1].local)})
    return config.model_copy(update={"source": source, "output": output}), outputs


def filesystem(url: str):
    """The fsspec file system and path for `url`; a missing driver or bad URL is one line."""
    import fsspec

    try:  # a fresh instance with no listing cache: a long-lived worker must see new objects
        return fsspec.core.url_to_fs(url, skip_instance_cache=True, use_listings_cache=False)
    except (ImportError, ValueError) as exc:  # fsspec's message names the package to install
        raise EmbedpipeError(f"{url}: {first_line(exc)}") from None


def fetch_inputs(url: str, root: Path) -> str:
    """Mirror the input files `url` names (a file, a directory or a glob) under `root`;
    return the local glob that names the mirrored files."""
    fs, path = filesystem(url)
    local = root / _slug(url)
    try:
        base, found = _listing(fs, path)
        targets = {remote: local / remote[len(base) :].lstrip("/") for remote in found}
        fetched = _read_json(local / ".fetched.json")
        for remote, target in targets.items():
            info = found[remote]
            mark = [info.get("size"), str(info.get("ETag") or info.get("mtime") or info.get("LastModified") or "")]
            if fetched.get(str(target)) != mark or not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(f".{target.name}.tmp")  # hidden: never taken for an input
                fs.get_file(remote, str(partial))
                if (modified := _modified(info)) is not None:  # as in the bucket: unchanged on any machine
                    os.utime(partial, (modified, modified))
                os.replace(partial, target)
                fetched[str(target)] = mark
    except (OSError, ValueError) as exc:
        raise EmbedpipeError(f"source.path {url}: cannot fetch it ({type(exc).__name__}: {first_line(exc)})") from None
    if not found:
        raise EmbedpipeError(f"source.path {url}: no {describe_suffixes()} files found")
    kept = {str(target) for target in targets.values()}
    for old in [p for p in local.rglob("*") if p.is_file() and not p.name.startswith(".")]:
        if str(old) not in kept:  # gone from the bucket: gone from the run
            old.unlink()
            fetched.pop(str(old), None)
    _write_json(local / ".fetched.json", fetched)
    return str(local / "**" / "*")


def fetch_input_file(url: str, root: Path, file: Path) -> None:
    """Fetch `file`, one of the input files of `url` as `fetch_inputs` mirrored them under
    `root`, into the same place on this host: a cluster worker's copy of a partition's input."""
    fs, path = filesystem(url)
    try:
        base = path.rstrip("/") if fs.isdir(path) else _glob_base(path)
        remote = f"{base}/{file.relative_to(root / _slug(url)).as_posix()}"
        file.parent.mkdir(parents=True, exist_ok=True)
        partial = file.with_name(f".{file.name}.tmp")
        fs.get_file(remote, str(partial))
        if (modified := _modified(fs.info(remote))) is not None:  # as `fetch_inputs` left the flow's copy
            os.utime(partial, (modified, modified))
        os.replace(partial, file)
    except (OSError, ValueError) as exc:
        raise EmbedpipeError(f"source.path {url}: cannot fetch it ({type(exc).__name__}: {first_line(exc)})") from None


class RemoteOutput:
    """An output directory at `url`, worked on in a local mirror and copied up when published."""

    def __init__(self, url: str, root: Path):
        self.url = url.rstrip("/")
        self.fs, self.path = filesystem(self.url)
        self.local = root / _slug(self.url)

    def check_writable(self) -> None:
        """Write and delete a marker, so a wrong bucket or a missing permission stops the run
        before its first call, not after its last."""
        probe = f"{self.path}/.embedpipe-write-check"
        try:
            self.fs.pipe_file(probe, b"")
            self.fs.rm_file(probe)
        except (OSError, ValueError) as exc:
            raise EmbedpipeError(
                f"output.path {self.url}: cannot write there ({type(exc).__name__}: {first_line(exc)}); check the "
                "bucket and its permissions"
            ) from None

    def pull(self) -> None:
        """Bring the mirror level with the published output, for an incremental run made
        elsewhere: fetch the manifest and its parts if the bucket's manifest differs."""
        try:
            if not self.fs.exists(f"{self.path}/{MANIFEST}"):
                return
            remote = self.fs.cat_file(f"{self.path}/{MANIFEST}")
            mine = self.local / MANIFEST
            if mine.exists() and mine.read_bytes() == remote:
                return
            names = [f["name"] for f in json.loads(remote)["files"]]
            self.local.mkdir(parents=True, exist_ok=True)
            mine.unlink(missing_ok=True)
            for name in names:
                self.fs.get_file(f"{self.path}/{name}", str(self.local / name))
            for stale in self.local.glob("part-*.parquet"):
                if stale.name not in names:
                    stale.unlink()
            mine.write_bytes(remote)
            _write_json(self.local / ".pushed.json", {name: _mark(self.local / name) for name in names})
        except (OSError, ValueError, KeyError) as exc:
            raise EmbedpipeError(
                f"output.path {self.url}: cannot read the last output ({type(exc).__name__}: {first_line(exc)})"
            ) from None

    def push(self) -> None:
        """Copy the published mirror up: the old manifest removed, changed parts uploaded,
        parts no longer listed deleted, the manifest last."""
        manifest = json.loads((self.local / MANIFEST).read_text(encoding="utf-8"))
        names = [f["name"] for f in manifest["files"]]
        pushed = _read_json(self.local / ".pushed.json")
        try:
            there = {Path(p).name: info.get("size") for p, info in self._ls().items()}
            if MANIFEST in there:
                self.fs.rm_file(f"{self.path}/{MANIFEST}")
            for name in names:
                mark = _mark(self.local / name)
                if pushed.get(name) != mark or there.get(name) != mark[0]:
                    self.fs.put_file(str(self.local / name), f"{self.path}/{name}")
                    pushed[name] = mark
            for name in there:
                if name.startswith("part-") and name not in names:
                    self.fs.rm_file(f"{self.path}/{name}")
            self.fs.put_file(str(self.local / MANIFEST), f"{self.path}/{MANIFEST}")
            for staged in self.fs.glob(f"{self.path}/.staging-*"):  # cluster workers' parts, published now
                self.fs.rm(staged, recursive=True)
        except (OSError, ValueError) as exc:
            raise EmbedpipeError(
                f"output.path {self.url}: cannot copy the output up ({type(exc).__name__}: {first_line(exc)}); it is "
                f"whole in {self.local}; run again to retry"
            ) from None
        _write_json(self.local / ".pushed.json", {name: pushed[name] for name in names})

    def _ls(self) -> dict[str, dict]:
        try:
            return {
                info["name"]: info
                for info in self.fs.ls(self.path, detail=True, refresh=True)
                if info.get("type") == "file"
            }
        except FileNotFoundError:
            return {}


def _listing(fs, path: str) -> tuple[str, dict[str, dict]]:
    """The remote input files of a file, a directory or a glob, with their details, and the
    directory their mirrored names are relative to."""
    if fs.isdir(path):
        found = fs.find(path, detail=True)
        return path.rstrip("/"), {p: info for p, info in found.items() if is_supported(p)}
    base = _glob_base(path)
    if fs.isfile(path):
        return base, {path: fs.info(path)}
    return base, {p: info for p, info in fs.glob(path, detail=True).items() if info.get("type") == "file"}


def _glob_base(path: str) -> str:
    """The directory above a file's path or a glob's first wildcard."""
    return re.split(r"[*?\[]", path, maxsplit=1)[0].rsplit("/", 1)[0]


def _modified(info: dict) -> float | None:
    """The object's modification time, as a POSIX timestamp, where the file system says."""
    value = info.get("LastModified") or info.get("mtime") or info.get("last_modified")
    if hasattr(value, "timestamp"):
        return float(value.timestamp())  # type: ignore[union-attr]  # a datetime
    return float(value) if isinstance(value, (int, float)) else None


def _slug(url: str) -> str:
    """A directory name for `url`: readable, and unique by a hash."""
    readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in url.split("://", 1)[-1])[-60:]
    return f"{readable}-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


def _mark(file: Path) -> list:
    stat = file.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_json(file: Path, value: dict) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(value), encoding="utf-8")
