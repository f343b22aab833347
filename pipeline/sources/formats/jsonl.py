"""JSON Lines (`.jsonl`, `.ndjson`): one JSON object a line, read in chunks of whole lines.

JSON's own types are kept, as Parquet's are: numbers stay numbers (an id column of integers
is an integer column), nested objects and arrays become structs and lists. JSON has no date
type, so a string is always a string: Arrow would otherwise read "2024-01-01" as a timestamp.
A file's columns are the union of every line's keys, learned by reading the whole file once
(a key may first appear on the last line); that read checks every line, so a bad one stops
the run before any spending, with its line number.
"""

from __future__ import annotations

import codecs
import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pajson

from pipeline.config import first_line
from pipeline.errors import SourceError
from pipeline.sources.formats.base import InputFormat

CHUNK_BYTES = 8 << 20  # read at a time (then on to the end of the line): what bounds memory
_ONE_OBJECT = "write one JSON object a line"
_KINDS = {str: "a string", bool: "a boolean", int: "a number", float: "a number", dict: "an object", list: "an array"}


class JsonLinesFormat(InputFormat):
    """JSON Lines / newline-delimited JSON. Blank lines are skipped."""

    name = "jsonl"
    suffixes = (".jsonl", ".ndjson")
    read_through_to_validate = False  # `schema` has read every line already

    def schema(self, file: Path, encoding: str) -> pa.Schema:
        """Every key of every line, typed; learned once for each version of the file."""
        stat = file.stat()
        return _learned_schema(str(file), stat.st_size, stat.st_mtime_ns, encoding)

    def batches(
        self, file: Path, columns: list[str] | None, batch_rows: int, row_groups: list[int] | None, encoding: str
    ) -> Iterator[pa.RecordBatch]:
        """The file's rows in batches of at most `batch_rows`, every batch with the whole file's
        columns (or `columns`), a key missing from a line read as null."""
        schema = self.schema(file, encoding)
        if columns is not None:
            if missing := [name for name in columns if name not in schema.names]:
                raise SourceError(f"{file}: column {missing[0]!r} not found; columns are {', '.join(schema.names)}")
            schema = pa.schema([schema.field(name) for name in columns])
        options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        for chunk in _chunks(file, encoding):
            yield from _parse(file, chunk, options, schema).to_batches(max_chunksize=batch_rows)


@dataclass(frozen=True)
class _Chunk:
    data: bytes  # whole lines, in UTF-8
    first_line: int  # the file's number for its first line, from 1


@functools.lru_cache(maxsize=256)
def _learned_schema(path: str, size: int, modified_ns: int, encoding: str) -> pa.Schema:
    file, schema = Path(path), pa.schema([])
    for chunk in _chunks(file, encoding):
        found = _parse(file, chunk, pajson.ParseOptions(), schema).schema
        found = pa.schema([field.with_type(_strings_for_timestamps(field.type)) for field in found])
        try:
            schema = pa.unify_schemas([schema, found], promote_options="permissive")
        except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:  # a key's values change type between chunks
            raise _line_error(file, chunk, schema, exc) from None
    return schema


def _chunks(file: Path, encoding: str) -> Iterator[_Chunk]:
    """The file in chunks of whole lines, transcoded to UTF-8 where `encoding` is another."""
    utf8 = codecs.lookup(encoding).name == "utf-8"  # the reader's own; UTF-8 is checked after parsing
    line = 1
    with file.open("rb") as handle:
        while data := handle.read(CHUNK_BYTES):
            data += handle.readline()
            yield _Chunk(data if utf8 else _transcoded(file, data, encoding, line), line)
            line += data.count(b"\n")


def _transcoded(file: Path, data: bytes, encoding: str, first_line_number: int) -> bytes:
    try:
        return data.decode(encoding).encode("utf-8")
    except UnicodeDecodeError as exc:
        number = first_line_number + data.count(b"\n", 0, exc.start)
        raise SourceError(f"{file}: line {number}: not valid {encoding} ({exc.reason}); set source.encoding") from None


def _parse(file: Path, chunk: _Chunk, options: pajson.ParseOptions, known: pa.Schema) -> pa.Table:
    """One chunk as a table; a bad line is a SourceError with its number (`known`: the types
    the lines before should have set)."""
    # One block a chunk: Arrow cannot parse a line longer than its block.
    read = pajson.ReadOptions(block_size=len(chunk.data) + 1)
    try:
        table = pajson.read_json(pa.BufferReader(chunk.data), read_options=read, parse_options=options)
        table.validate(full=True)  # the JSON reader does not check that strings are UTF-8
    except pa.ArrowInvalid as exc:
        raise _line_error(file, chunk, known, exc) from None
    return table


def _strings_for_timestamps(kind: pa.DataType) -> pa.DataType:
    if pa.types.is_timestamp(kind):
        return pa.string()
    if pa.types.is_struct(kind):
        return pa.struct([field.with_type(_strings_for_timestamps(field.type)) for field in kind.fields])
    if pa.types.is_list(kind):
        return pa.list_(kind.value_field.with_type(_strings_for_timestamps(kind.value_type)))
    return kind


def _line_error(file: Path, chunk: _Chunk, known: pa.Schema, exc: Exception) -> SourceError:
    """The first bad line of `chunk`, found again line by line to name it; Arrow's message,
    with the chunk's lines, where no single line is to blame."""
    kinds = {field.name: kind for field in known if (kind := _arrow_kind(field.type))}
    for number, line in enumerate(chunk.data.split(b"\n"), chunk.first_line):
        if problem := _line_problem(line, kinds):
            return SourceError(f"{file}: line {number}: {problem}")
    last = chunk.first_line + chunk.data.count(b"\n", 0, len(chunk.data) - 1)
    return SourceError(f"{file}: cannot read as jsonl (lines {chunk.first_line}-{last}): {first_line(exc)}")


def _line_problem(line: bytes, kinds: dict[str, str]) -> str | None:
    """What is wrong with one line, if anything; `kinds` (key -> kind seen first) is updated."""
    if not line.strip():
        return None
    try:
        value = json.loads(line.decode("utf-8").lstrip("\ufeff"), object_pairs_hook=_object_of_distinct_keys)
    except UnicodeDecodeError as exc:
        return f"not valid UTF-8 ({exc.reason}); if the file uses another encoding, set source.encoding (e.g. latin-1)"
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg} at column {exc.colno}); {_ONE_OBJECT}"
    except _RepeatedKey as exc:
        return f"key {exc.key!r} appears twice in one object; keep one"
    if not isinstance(value, dict):
        return f"{_KINDS.get(type(value), 'null')}, not a JSON object; {_ONE_OBJECT}"
    for key, item in value.items():
        if item is None:
            continue
        kind = kinds.setdefault(key, _KINDS[type(item)])
        if kind != _KINDS[type(item)]:
            return f"key {key!r} holds {_KINDS[type(item)]} where earlier lines hold {kind}; give a key one type"
    return None


class _RepeatedKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _object_of_distinct_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    value = dict(pairs)
    if len(value) < len(pairs):
        keys = [key for key, _ in pairs]
        raise _RepeatedKey(next(key for key in keys if keys.count(key) > 1))
    return value


def _arrow_kind(kind: pa.DataType) -> str | None:
    """The JSON kind a value of Arrow type `kind` was read from (None for null)."""
    if pa.types.is_string(kind) or pa.types.is_timestamp(kind):
        return _KINDS[str]
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return _KINDS[float]
    if pa.types.is_boolean(kind):
        return _KINDS[bool]
    if pa.types.is_struct(kind):
        return _KINDS[dict]
    return _KINDS[list] if pa.types.is_list(kind) else None
