"""Write Parquet parts that readers see whole or not at all, then a manifest, last."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.arrow_strings import from_numpy
from pipeline.config import first_line
from pipeline.errors import EmbedpipeError, is_disk_full
from pipeline.sinks.vector_dtypes import as_float_lists, file_encodings

if TYPE_CHECKING:  # the embedding step imports nothing of the output
    from pipeline.run.embed import EmbeddedText

MANIFEST = "_manifest.json"
_open_parts: weakref.WeakSet = weakref.WeakSet()  # parts being written, for `abandon_open_parts`


@contextmanager
def disk_space(path: Path, needs: str) -> Iterator[None]:
    """Turn a full disk (or quota) while writing `path` into one line naming it and what it
    `needs`; other errors pass through."""
    try:
        yield
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise EmbedpipeError(
            f"output.path {path}: the disk is full ({needs}); free space there or set output.path elsewhere. "
            "The vectors already paid for are in the cache: the next run does not pay for them again"
        ) from None


def _megabytes(size: float) -> str:
    return f"{size / 1e6:,.1f} MB"


def vector_array(matrix: np.ndarray, present: np.ndarray | None = None) -> pa.FixedSizeListArray:
    """`fixed_size_list<float32>[dimensions]` from a rows × dimensions matrix; null where
    `present` is False."""
    mask = None if present is None else from_numpy(~present)
    flat = from_numpy(np.ascontiguousarray(matrix, dtype=np.float32).ravel())  # `pa.array` would import pandas
    return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1], mask=mask)


def write_file(table: pa.Table, path: Path) -> Path:
    """Write `table` to `path` whole or not at all: a temporary name, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with disk_space(path, f"writing {table.num_rows:,} rows needs about {_megabytes(table.nbytes)}"):
            pq.write_table(table, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def write_delta(output: str | Path, table_path: str) -> None:
    """Copy the published output into a Delta Lake table at `table_path`, replacing its
    contents in one commit. Delta has no fixed-size list (nor half floats): vectors become
    list<float>, decoded from whatever dtype the output stores."""
    from deltalake import write_deltalake

    parts = sorted(Path(output).glob("part-*.parquet"))
    if not parts:
        return
    schema = pa.schema(as_float_lists(pq.read_schema(parts[0]).empty_table(), {}).schema)
    try:
        write_deltalake(
            table_path,
            pa.RecordBatchReader.from_batches(schema, _float_batches(parts)),
            mode="overwrite",
            schema_mode="overwrite",
        )
    except Exception as exc:  # noqa: BLE001  deltalake raises its own and pyarrow's errors; the cause is what matters
        raise EmbedpipeError(
            f"output.delta_path {table_path}: cannot write the Delta table ({type(exc).__name__}: {first_line(exc)})"
        ) from None


def _float_batches(parts: list[Path]) -> Iterator[pa.RecordBatch]:
    """Every part's rows, a batch at a time, vectors as list<float> (`as_float_lists`)."""
    for part in parts:
        source = pq.ParquetFile(part)
        recorded = file_encodings(source.schema_arrow.metadata)
        for batch in source.iter_batches():
            yield from as_float_lists(pa.Table.from_batches([batch]), recorded).to_batches()


class PartWriter:
    """One output part, written to a temporary name and renamed when whole. A part that fails
    (a full disk) removes its temporary file: nothing half-written is left behind."""

    def __init__(self, path: Path, metadata: dict[str, str], expected_rows: int | None = None):
        self.path, self.metadata, self.rows = path, metadata, 0
        self.expected_rows = expected_rows  # for what a full disk would need
        self._tmp = path.with_name(path.name + ".tmp")
        self._writer: pq.ParquetWriter | None = None
        _open_parts.add(self)

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        with self._removed_on_failure(table.nbytes):
            if self._writer is None:
                schema = table.schema.with_metadata({**(table.schema.metadata or {}), **self.metadata})
                # Dictionary-encoding float vectors never pays and doubled the cost of a write.
                plain = [f.name for f in schema if not pa.types.is_fixed_size_list(f.type)]
                self._writer = pq.ParquetWriter(self._tmp, schema, use_dictionary=plain)
            self._writer.write(table if isinstance(table, pa.Table) else pa.Table.from_batches([table]))
        self.rows += table.num_rows

    def finish(self) -> int:
        """Make the part whole (an input with no rows writes none); returns its row count."""
        if self._writer is not None:
            with self._removed_on_failure(0):
                self._writer.close()
            os.replace(self._tmp, self.path)
        _open_parts.discard(self)
        return self.rows

    def abandon(self) -> None:
        """Remove the temporary file (the run is stopping); a finished part stays."""
        self._tmp.unlink(missing_ok=True)
        _open_parts.discard(self)

    @contextmanager
    def _removed_on_failure(self, batch_bytes: int) -> Iterator[None]:
        try:
            with disk_space(self.path.parent.parent, self._needs(batch_bytes)):
                yield
        except BaseException:
            if self._writer is not None:
                with contextlib.suppress(OSError):  # the disk is still full: the file goes anyway
                    self._writer.close()
                self._writer = None
            self.abandon()
            raise

    def _needs(self, batch_bytes: int) -> str:
        written = self._tmp.stat().st_size if self._tmp.exists() else 0
        rows = max(self.rows, 1)
        total = written / rows * self.expected_rows if self.expected_rows and self.rows else written + batch_bytes
        return f"{self.path.name} needs about {_megabytes(max(total, batch_bytes))}"


def abandon_open_parts() -> None:
    """Remove the temporary files of every part still being written in this process."""
    for part in list(_open_parts):
        part.abandon()


class ParquetSink:
    """A directory of `part-NNNNN.parquet` files, staged privately and published together.

    Parts are written under a hidden staging directory named by `run_key` (a hash of the
    config and the input), so a run started again after a crash finds the parts it finished.
    `publish` renames each into place (atomic per file), removes parts a previous run left,
    and writes the manifest last.
    """

    def __init__(self, path: str | Path, metadata: dict[str, str], run_key: str, *, locked: bool = True):
        """`locked=False` writes parts into the staging directory of a run that another
        process (the flow, whose workers these are) has open and holds the lock for."""
        self.path = Path(path)
        self.metadata = {key: str(value) for key, value in metadata.items()}
        self.run_key = run_key
        self.staging = self.path / f".staging-{run_key}"
        self._lock = None
        if not locked:
            if not self.staging.is_dir():
                raise EmbedpipeError(
                    f"output path {self.path}: this worker cannot see the run's staging directory; on a cluster, "
                    "output.path and cache.path must be on storage every worker shares"
                )
            return
        try:
            with disk_space(self.path, "creating the output directory"):
                self.staging.mkdir(parents=True, exist_ok=True)
                self._lock = open(self.path / ".lock", "w")  # noqa: SIM115  held for the run
        except OSError as exc:
            raise EmbedpipeError(f"output path {self.path}: cannot create it ({exc.strerror})") from None
        try:  # one run at a time per output: a scheduled run must not interleave with a manual one
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise EmbedpipeError(
                f"output path {self.path}: another embedpipe run is writing it; wait for it to finish"
            ) from None

    @staticmethod
    def part_name(index: int) -> str:
        return f"part-{index:05d}.parquet"

    def finished_rows(self, index: int) -> int | None:
        """Rows of part `index` if an earlier attempt of this run finished it, else None."""
        path = self.staging / self.part_name(index)
        return pq.ParquetFile(path).metadata.num_rows if path.exists() else None

    def open_part(self, index: int, expected_rows: int | None = None) -> PartWriter:
        """A writer for part `index`; `expected_rows` sizes what a full disk would need."""
        return PartWriter(self.staging / self.part_name(index), self.metadata, expected_rows)

    def staged(self, parts: dict[int, int]) -> list[Path]:
        """The staged files of `parts` (index -> rows) that hold rows, in order."""
        return [self.staging / self.part_name(i) for i, rows in sorted(parts.items()) if rows]

    def adopt(self, index: int, previous: Path) -> int:
        """Stage an unchanged part from the previous run as part `index`, by hard link where the
        file system allows (nothing rewritten), else by copy. Returns its row count."""
        target = self.staging / self.part_name(index)
        target.unlink(missing_ok=True)
        try:
            os.link(previous, target)
        except OSError:
            try:
                with disk_space(self.path, f"copying {previous.name} needs {_megabytes(previous.stat().st_size)}"):
                    shutil.copyfile(previous, target)
            except BaseException:
                target.unlink(missing_ok=True)
                raise
        return pq.ParquetFile(target).metadata.num_rows

    def publish(self, manifest: dict, parts: dict[int, int], sources: dict[int, dict] | None = None) -> dict:
        """Move the staged parts (index -> rows) into place, drop stale parts, write the
        manifest, which records each part's input (`sources`) for the next incremental run."""
        names = {self.part_name(i): rows for i, rows in sorted(parts.items()) if rows}
        source_of = {self.part_name(i): (sources or {}).get(i) for i in parts}
        (self.path / MANIFEST).unlink(missing_ok=True)  # no manifest vouches for a half-swapped set
        for name in names:
            os.replace(self.staging / name, self.path / name)
        for stale in self.path.glob("part-*.parquet"):
            if stale.name not in names:
                stale.unlink()
        manifest = {**manifest, "files": [{"name": n, "rows": r, "source": source_of[n]} for n, r in names.items()]}
        tmp, text = self.staging / MANIFEST, json.dumps(manifest, indent=2, default=str)
        try:
            with disk_space(self.path, f"the manifest needs {_megabytes(len(text))}"):
                tmp.write_text(text, encoding="utf-8")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, self.path / MANIFEST)
        for staging in self.path.glob(".staging-*"):  # this run's, and any an abandoned run left
            shutil.rmtree(staging, ignore_errors=True)
        self.close()
        return manifest

    def close(self) -> None:
        """Let another run write this output."""
        if self._lock is not None:
            self._lock.close()


def chunk_table(ids: pa.Array, results: list[EmbeddedText | None], dimensions: int) -> pa.Table:
    """One row per chunk: id, chunk_index, text, token_count, char_start, char_end, vector."""
    columns: dict[str, list] = {
        name: [] for name in ("row", "chunk_index", "text", "token_count", "char_start", "char_end", "vector")
    }
    for row, result in enumerate(results):
        for n, (chunk, vector) in enumerate(zip(result.chunks, result.chunk_vectors) if result else ()):
            for name, value in zip(columns, (row, n, chunk.text, chunk.tokens, chunk.start, chunk.end, vector)):
                columns[name].append(value)
    return pa.table(
        {
            "id": ids.take(pa.array(columns["row"], type=pa.int64())),
            "chunk_index": pa.array(columns["chunk_index"], type=pa.int32()),
            "text": pa.array(columns["text"], type=pa.string()),
            "token_count": pa.array(columns["token_count"], type=pa.int32()),
            "char_start": pa.array(columns["char_start"], type=pa.int64()),
            "char_end": pa.array(columns["char_end"], type=pa.int64()),
            "vector": vector_array(np.array(columns["vector"], dtype=np.float32).reshape(-1, dimensions)),
        }
    )
