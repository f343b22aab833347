"""Staged parts on the object store, for cluster workers on hosts that share no disk with the flow.

A run whose output is on an object store works on a local mirror of it (`pipeline.remote`).
A worker on another host has no such mirror: it fetches its partition's input file from the
bucket into its own mirror, stages the part in its own staging directory as always, then
uploads it to `{output URL}/.staging-{run key}/`. An upload is one object put, seen whole or
not at all, so a worker killed mid-partition leaves nothing there, and its partition, run again
elsewhere, starts clean; a part already uploaded by a worker that died before it reported is
fetched, not embedded again. The flow fetches the parts it lacks before it publishes; the push
that publishes removes the staged prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config import first_line
from pipeline.errors import EmbedpipeError
from pipeline.incremental.unchanged_files import part_source
from pipeline.remote import fetch_input_file, filesystem
from pipeline.sinks.parquet import ParquetSink
from pipeline.sources.partitions import Partition


@dataclass(frozen=True)
class RemoteParts:
    """Where the workers of a run find its input and put its parts, on the object store."""

    source_url: str | None  # source.path as configured, where it is remote
    mirror_root: str  # the input mirror's root, `cache.path`/remote/inputs as the flow names it
    outputs: dict[str, str]  # each remote output's local mirror, as the flow names it -> its URL
    run_key: str

    def fetch_input(self, partition: Partition, source: dict) -> None:
        """Make `partition.file` on this host the very file the flow read (`source`, its
        fingerprint then): fetched from the bucket unless this host already holds it."""
        if self.source_url is None or _same_input(partition, source):
            return
        fetch_input_file(self.source_url, Path(self.mirror_root), partition.file)
        if not _same_input(partition, source):
            raise EmbedpipeError(
                f"source.path {self.source_url}: {partition.file.name} changed in the bucket during the run; run again"
            )

    def staged_sink(self, path: str, metadata: dict) -> ParquetSink:
        """The worker's sink for the output mirrored at `path`: its own staging directory."""
        if path in self.outputs:
            (Path(path) / f".staging-{self.run_key}").mkdir(parents=True, exist_ok=True)
        return ParquetSink(path, metadata, self.run_key, locked=False)

    def fetch_part(self, sink: ParquetSink, index: int) -> bool:
        """Part `index` from the bucket into `sink`'s staging directory, if uploaded and not
        here; whether it was."""
        target = sink.staging / sink.part_name(index)
        if str(sink.path) not in self.outputs or target.exists():
            return False
        fs, remote = self._staged(sink, index)
        try:
            if not fs.exists(remote):
                return False
            partial = target.with_name(f".{target.name}.fetching")  # never taken for a finished part
            fs.get_file(remote, str(partial))
            partial.replace(target)
        except OSError as exc:
            raise self._error(sink, "fetch", exc) from None
        return True

    def upload_part(self, sink: ParquetSink, index: int) -> None:
        """Part `index`, finished in `sink`'s staging directory, up to the bucket's."""
        part = sink.staging / sink.part_name(index)
        if str(sink.path) not in self.outputs or not part.exists():  # a partition of no rows writes no part
            return
        fs, remote = self._staged(sink, index)
        try:
            fs.put_file(str(part), remote)
        except OSError as exc:
            raise self._error(sink, "upload", exc) from None

    def _staged(self, sink: ParquetSink, index: int):
        fs, path = filesystem(self.outputs[str(sink.path)])
        return fs, f"{path.rstrip('/')}/.staging-{self.run_key}/{sink.part_name(index)}"

    def _error(self, sink: ParquetSink, doing: str, exc: OSError) -> EmbedpipeError:
        url = self.outputs[str(sink.path)]
        why = f"{type(exc).__name__}: {first_line(exc)}"
        return EmbedpipeError(f"output.path {url}: cannot {doing} a staged part ({why})")


def remote_parts(
    source_url: str | None, mirror_root: Path, outputs: dict[str, str], run_key: str
) -> RemoteParts | None:
    """What workers on other hosts need of a run reading or writing an object store; None when
    it reads and writes local paths only (then the cluster must share them)."""
    if source_url is None and not outputs:
        return None
    return RemoteParts(source_url, str(mirror_root), outputs, run_key)


def collect_parts(parts: RemoteParts | None, sinks: list[ParquetSink | None], rows: dict[int, int]) -> None:
    """The flow, before it publishes: every staged part with rows that a worker uploaded, here."""
    for sink in sinks:
        if parts is not None and sink is not None:
            for index, count in rows.items():
                if count:
                    parts.fetch_part(sink, index)


def _same_input(partition: Partition, source: dict) -> bool:
    try:
        return part_source(partition) == source
    except OSError:  # not on this host
        return False
