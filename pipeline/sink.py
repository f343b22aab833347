"""Write Parquet parts that readers see whole or not at all, then a manifest, last."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import EmbedpipeError

MANIFEST = "_manifest.json"


def vector_array(vectors: list[np.ndarray | None], dimensions: int) -> pa.FixedSizeListArray:
    """`fixed_size_list<float32>[dimensions]`, null where the vector is None."""
    flat = np.zeros((len(vectors), dimensions), dtype=np.float32)
    for i, vector in enumerate(vectors):
        if vector is not None:
            flat[i] = vector
    mask = pa.array([vector is None for vector in vectors], type=pa.bool_())
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), dimensions, mask=mask)


class ParquetSink:
    """A directory of `part-NNNNN.parquet` files, staged privately and published together.

    Parts are written under a hidden staging directory; `publish` renames each into place
    (atomic per file), removes parts a previous run left, and writes the manifest last.
    """

    def __init__(self, path: str | Path, metadata: dict[str, str]):
        self.path = Path(path)
        self.metadata = {key: str(value) for key, value in metadata.items()}
        self.staging = self.path / f".staging-{uuid.uuid4().hex[:12]}"
        try:
            self.staging.mkdir(parents=True)
        except OSError as exc:
            raise EmbedpipeError(f"output path {self.path}: cannot create it ({exc.strerror})") from None
        self.parts: dict[str, int] = {}
        self._writer: pq.ParquetWriter | None = None
        self._name = ""

    def write(self, part: int, table: pa.Table | pa.RecordBatch) -> None:
        """Append rows to part number `part`; parts are written one after another."""
        name = f"part-{part:05d}.parquet"
        if name != self._name:
            self.close_part()
            schema = table.schema.with_metadata({**(table.schema.metadata or {}), **self.metadata})
            self._writer = pq.ParquetWriter(self.staging / name, schema)
            self._name, self.parts[name] = name, 0
        self._writer.write(table if isinstance(table, pa.Table) else pa.Table.from_batches([table]))
        self.parts[name] += table.num_rows

    def close_part(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def publish(self, manifest: dict) -> dict:
        """Move the staged parts into place, drop stale parts, then write the manifest."""
        self.close_part()
        (self.path / MANIFEST).unlink(missing_ok=True)  # no manifest vouches for a half-swapped set
        for name in self.parts:
            os.replace(self.staging / name, self.path / name)
        for stale in self.path.glob("part-*.parquet"):
            if stale.name not in self.parts:
                stale.unlink()
        manifest = {**manifest, "files": [{"name": n, "rows": r} for n, r in self.parts.items()]}
        tmp = self.staging / MANIFEST
        tmp.write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
        os.replace(tmp, self.path / MANIFEST)
        for staging in self.path.glob(".staging-*"):  # this run's, and any a killed run left
            shutil.rmtree(staging, ignore_errors=True)
        return manifest

    def abort(self) -> None:
        """Forget everything staged: the published output stays as the last good run left it."""
        self.close_part()
        shutil.rmtree(self.staging, ignore_errors=True)
