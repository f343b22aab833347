"""Model migration: the last output's other vector columns carried into this run's parts, by id.

A run whose `output.vector_column` is not among the columns the last output at the same path
holds (a second model: `embedding_v2` beside `embedding`) keeps those columns: each staged part
the run wrote gets them, row by row, from the last output's row with the same id and the same
text columns (null for an id that is new, or a row whose text changed: its old vector would
describe the old text). Stored values are copied as they are, with their encoding's parameters; where
the last output's files disagree on those (int8 parts from different runs), the column is
decoded and encoded again on one scale. The manifest keeps each column's record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.incremental.unchanged_rows import same_values
from pipeline.sinks.parquet import MANIFEST
from pipeline.sinks.vector_dtypes import (
    VECTORS_KEY,
    encoded_array,
    encoding,
    file_encodings,
    filled_codes,
)


@dataclass
class CarriedColumns:
    """The last output's vector columns other than this run's: ids, stored values, records."""

    id_column: str
    current: str  # this run's vector column: the carried ones go before it
    ids: pa.Array
    texts: pa.Table  # the text columns of the last output's rows, aligned with `ids`
    values: dict[str, pa.Array]  # column -> fixed_size_list values, aligned with `ids`
    params: dict[str, dict]  # column -> its encoding's record, as each file's metadata keeps it
    records: dict[str, dict]  # column -> the manifest's record (model, dimensions, dtype, ...)

    @classmethod
    def read(cls, output: str | Path, current: str, id_column: str, texts: list[str]) -> CarriedColumns | None:
        """The columns to carry from the output at `output`; None when there are none."""
        try:
            manifest = json.loads((Path(output) / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        records = {name: r for name, r in _records(manifest).items() if name != current}
        files = [Path(output) / f["name"] for f in manifest.get("files", [])]
        if not records or not files or (manifest.get("columns") or {}).get("id", "id") != id_column:
            return None
        pieces = [pq.read_table(f, columns=list(dict.fromkeys([id_column, *texts, *records]))) for f in files]
        file_params = [file_encodings(pq.read_schema(f).metadata) for f in files]
        values, params = {}, {}
        for name, record in records.items():
            per_file = [p.get(name, {"dtype": record.get("dtype", "float32")}) for p in file_params]
            values[name], params[name] = _one_encoding([t[name] for t in pieces], per_file)
        ids = pa.concat_arrays([t[id_column].combine_chunks() for t in pieces])
        text_table = pa.concat_tables([t.select(texts) for t in pieces])
        return cls(id_column, current, ids, text_table, values, params, records)

    def carry_into(self, parts: list[Path]) -> None:
        """Add the carried columns to each of `parts` that lacks them (a part kept from the last
        run has them already), whole or not at all."""
        for part in parts:
            schema = pq.read_schema(part)
            missing = [name for name in self.values if name not in schema.names]
            if missing:
                self._add(part, missing)

    def _add(self, part: Path, columns: list[str]) -> None:
        table = pq.read_table(part)
        rows = pc.index_in(table[self.id_column], value_set=self.ids)  # null for an id the last output lacks
        for name in self.texts.column_names:
            same = pc.fill_null(same_values(table[name], self.texts[name].take(rows)), False)
            rows = pc.if_else(same, rows, pa.scalar(None, rows.type))
        recorded = file_encodings(table.schema.metadata)
        for name in columns:
            table = table.add_column(table.schema.get_field_index(self.current), name, self.values[name].take(rows))
            recorded[name] = self.params[name]
        metadata = {**(table.schema.metadata or {}), VECTORS_KEY: json.dumps(recorded).encode()}
        table = table.replace_schema_metadata(metadata)
        tmp = part.with_name(f".{part.name}.carried")
        plain = [f.name for f in table.schema if not pa.types.is_fixed_size_list(f.type)]
        coded = [f"{n}.list.element" for n in columns if encoding(self.params[n]["dtype"]).dictionary]
        try:
            pq.write_table(table, tmp, use_dictionary=plain + coded)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(part)


def _records(manifest: dict) -> dict[str, dict]:
    """Each vector column's record; a manifest written before there were several has one column."""
    if manifest.get("vectors"):
        return manifest["vectors"]
    column = (manifest.get("columns") or {}).get("vector")
    keys = ("provider", "model", "dimensions", "chunking")
    return {column: {**{k: manifest.get(k) for k in keys}, "dtype": "float32"}} if column else {}


def _one_encoding(columns: list[pa.ChunkedArray], per_file: list[dict]) -> tuple[pa.Array, dict]:
    """One column's values from every file, on one set of encoding parameters."""
    arrays = [c.combine_chunks() for c in columns]
    if all(p == per_file[0] for p in per_file):
        return pa.concat_arrays(arrays), per_file[0]
    enc = encoding(per_file[0]["dtype"])
    matrix = np.concatenate([enc.decode(filled_codes(a), p) for a, p in zip(arrays, per_file)])
    params = {"dtype": enc.name, **enc.calibrate(matrix)}
    present = np.concatenate([a.is_valid().to_numpy(zero_copy_only=False) for a in arrays])
    return encoded_array(enc.encode(matrix, params), present, enc), params
