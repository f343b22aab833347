"""Commit the published output to an Apache Iceberg table (pyiceberg; a SQL or REST catalog).

Each output part is one partition of the table (identity on `PART_COLUMN`). The table's
properties record, for each part, a key of what made it (the settings and the input it was read
from); a run rewrites only the partitions whose key changed, drops those of parts that are gone,
and does both, with the new properties, in one transaction: one commit to the catalog, so a
reader sees a run whole or not at all, and a rerun of an unchanged input adds no row. Vectors
are `list<float>` (Iceberg has no fixed-size list), decoded from whatever dtype the output
stores; each vector column's dimensions, model and dtype are table properties.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import first_line
from pipeline.errors import EmbedpipeError
from pipeline.sinks.vector_dtypes import as_float_lists, file_encodings

if TYPE_CHECKING:
    from pipeline.config import IcebergConfig

PART_COLUMN = "embedpipe_part"  # the output part a row came from; the table's partition
PARTS_PROPERTY = "embedpipe.parts"  # {part: key of what made it}


def write_iceberg(output: str | Path, settings: IcebergConfig, manifest: dict) -> dict:
    """Commit the output at `output` (its `manifest` just published) to the table `settings`
    names, creating it if need be; returns what the commit changed."""
    try:
        return _commit(Path(output), settings, manifest)
    except EmbedpipeError:
        raise
    except Exception as exc:  # noqa: BLE001  pyiceberg, SQLAlchemy and pyarrow raise their own: the cause matters
        cause = _without_password(first_line(exc), settings.catalog_uri)
        raise EmbedpipeError(
            f"output.iceberg: cannot commit to table {settings.table} ({type(exc).__name__}: {cause})"
        ) from None


def _without_password(message: str, uri: str) -> str:
    """`message` with the catalog URI's password, should a driver quote it, masked."""
    password = urlsplit(uri).password
    return message.replace(password, "***") if password else message


def _commit(output: Path, settings: IcebergConfig, manifest: dict) -> dict:
    from pyiceberg.exceptions import NoSuchTableError

    catalog = open_catalog(settings)
    wanted = {_stem(f["name"]): _part_key(manifest, f) for f in manifest["files"]}
    try:
        table = catalog.load_table(settings.table)
    except NoSuchTableError:
        table = None
    recorded = json.loads(table.properties.get(PARTS_PROPERTY, "{}")) if table is not None else {}
    changed = [part for part, key in wanted.items() if recorded.get(part) != key]
    gone = [part for part in recorded if part not in wanted or part in changed]
    if table is None and not changed:
        return {"table": settings.table, "rewritten_parts": 0, "removed_parts": 0}
    schema = _iceberg_rows(output / f"{changed[0]}.parquet").schema if changed else None
    if table is None:
        catalog.create_namespace_if_not_exists(settings.table.rsplit(".", 1)[0])
        transaction = catalog.create_table_transaction(settings.table, schema=schema)
        with transaction.update_spec() as spec:
            spec.add_identity(PART_COLUMN)
    else:
        transaction = table.transaction()
        if schema is not None:  # a new vector column (a second model) joins the table's
            with transaction.update_schema() as update:
                update.union_by_name(schema)
    if gone:
        transaction.delete(f"{PART_COLUMN} IN ({', '.join(repr(part) for part in gone)})")  # names embedpipe made
    for part in changed:
        transaction.append(_iceberg_rows(output / f"{part}.parquet"))
    transaction.set_properties({PARTS_PROPERTY: json.dumps(wanted, sort_keys=True), **_vector_properties(manifest)})
    transaction.commit_transaction()
    return {"table": settings.table, "rewritten_parts": len(changed), "removed_parts": len(set(gone) - set(changed))}


def open_catalog(settings: IcebergConfig):
    """The catalog `settings.catalog_uri` names: http(s) a REST catalog, anything else SQL (SQLAlchemy)."""
    from pyiceberg.catalog import load_catalog

    uri, warehouse = settings.catalog_uri, settings.warehouse
    kind = "rest" if uri.startswith(("http://", "https://")) else "sql"
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if "://" not in warehouse:  # a local directory
        Path(warehouse).mkdir(parents=True, exist_ok=True)
        warehouse = Path(warehouse).resolve().as_uri()
    return load_catalog("embedpipe", type=kind, uri=uri, warehouse=warehouse)


def _iceberg_rows(part: Path) -> pa.Table:
    """A part's rows as the table holds them: vectors decoded to list<float>, and the part's name."""
    table = pq.read_table(part)
    table = as_float_lists(table, file_encodings(table.schema.metadata))
    return table.append_column(PART_COLUMN, pa.array([part.stem] * table.num_rows, pa.string()))


def _vector_properties(manifest: dict) -> dict[str, str]:
    """Each vector column's dimensions, model, provider and dtype, as table properties."""
    return {
        f"embedpipe.vector.{column}.{name}": str(record[name])
        for column, record in manifest.get("vectors", {}).items()
        for name in ("dimensions", "model", "provider", "dtype")
        if name in record
    }


def _part_key(manifest: dict, file: dict) -> str:
    made = {"settings": manifest.get("settings_key"), "rows": file["rows"], "source": file.get("source")}
    return hashlib.sha256(json.dumps(made, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _stem(name: str) -> str:
    return name.removesuffix(".parquet")
