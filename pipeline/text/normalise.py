"""Turn a row into the text a model sees: render and normalise (the cache hashes it: `VectorCache.keys`)."""

from __future__ import annotations

import re
import string
import unicodedata

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.arrow_strings import large_strings

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_ASCII_WHITESPACE = r"[\t\n\x0b\x0c\r\x1c-\x1f ]+"  # what str.split() splits at, of ASCII
_NEEDS_COLLAPSING = r"[\t\n\x0b\x0c\r\x1c-\x1f]|  |^ | $"  # an ASCII row that `_ASCII_WHITESPACE` changes


def normalise_paragraphs(raw: str | None) -> list[str]:
    """Split `raw` at blank lines and normalise each part; empty parts are dropped.

    `" ".join(result)` is the normalised text (NFC, whitespace runs collapsed, stripped);
    the chunker uses the paragraph boundaries that normalising would otherwise erase.
    """
    if not raw:
        return []
    paragraphs = (" ".join(part.split()) for part in _PARAGRAPH_BREAK.split(unicodedata.normalize("NFC", raw)))
    return [p for p in paragraphs if p]


def normalise_text(raw: str | None) -> str:
    """NFC, whitespace runs collapsed to one space, stripped. Empty for null input."""
    return " ".join(normalise_paragraphs(raw))


def normalise_column(raw: list[str | None] | pa.Array | pa.ChunkedArray) -> list[str]:
    """`normalise_text` of each row (`normalised_array` as Python strings)."""
    return normalised_array(raw).to_pylist()


def normalised_array(raw: list[str | None] | pa.Array | pa.ChunkedArray) -> pa.LargeStringArray:
    """`normalise_text` of each row, as one Arrow array ("" where null or blank). ASCII rows
    (nearly all rows of most tables; NFC leaves them as they are) are normalised in Arrow, and
    only those with whitespace to collapse are rewritten; the others one by one in Python."""
    try:
        array = _large_strings(raw)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, AttributeError):  # not all strings
        return large_strings([normalise_text(text) if isinstance(text, str) else "" for text in raw])
    # Python scalars (fill_null(x, True)) would import pandas through pyarrow's shim: kleene logic instead.
    ascii_rows = pc.or_kleene(pc.string_is_ascii(array), pc.is_null(array))  # null: normalised to ""
    # A regex match costs a tenth of a replace: most rows have nothing to collapse.
    matched = pc.match_substring_regex(array, _NEEDS_COLLAPSING)
    collapse = pc.and_(ascii_rows, pc.and_kleene(matched, pc.is_valid(matched)))
    if pc.any(collapse).as_py():
        collapsed = pc.utf8_trim(pc.replace_substring_regex(array.filter(collapse), _ASCII_WHITESPACE, " "), " ")
        array = pc.replace_with_mask(array, collapse, collapsed)
    other = pc.invert(ascii_rows)
    if pc.any(other).as_py():
        rewritten = [normalise_text(text) for text in array.filter(other).to_pylist()]
        array = pc.replace_with_mask(array, other, large_strings(rewritten))
    return pc.fill_null(array, large_strings([""])[0]) if array.null_count else array


def _large_strings(raw: list[str | None] | pa.Array | pa.ChunkedArray) -> pa.LargeStringArray:
    """`raw` as one large_string array: a list converted, a column of any string type cast."""
    if not isinstance(raw, (pa.Array, pa.ChunkedArray)):
        return large_strings(raw)  # not pa.array: see arrow_strings
    if isinstance(raw, pa.ChunkedArray):
        raw = raw.combine_chunks()
    if pa.types.is_dictionary(raw.type):
        raw = raw.dictionary_decode()
    if not (
        pa.types.is_null(raw.type)
        or pa.types.is_string(raw.type)
        or pa.types.is_large_string(raw.type)
        or pa.types.is_string_view(raw.type)
    ):
        raise pa.ArrowTypeError(f"not text: {raw.type}")
    return raw.cast(pa.large_string())


def template_fields(template: str) -> list[str]:
    """Column names a `str.format` template refers to, in order, without repeats."""
    names = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    if any(not name for name in names):
        raise ValueError("template fields must name columns, e.g. {title}; {} is not allowed")
    return list(dict.fromkeys(names))


def render_template(template: str, columns: dict[str, list]) -> list[str | None]:
    """Fill `template` once per row; null values render empty; a row whose fields are all null is null."""
    names = list(columns)
    rows = zip(*(columns[name] for name in names)) if names else iter([()])
    rendered: list[str | None] = []
    for values in rows:
        if all(value is None for value in values):
            rendered.append(None)
            continue
        fields = {name: "" if value is None else value for name, value in zip(names, values)}
        rendered.append(template.format_map(fields))
    return rendered
