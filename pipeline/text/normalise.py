"""Turn a row into the text a model sees: render and normalise (the cache hashes it: `VectorCache.keys`)."""

from __future__ import annotations

import re
import string
import unicodedata

import pyarrow.compute as pc

from pipeline.arrow_strings import large_strings

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_ASCII_WHITESPACE = r"[\t\n\x0b\x0c\r\x1c-\x1f ]+"  # what str.split() splits at, of ASCII


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


def normalise_column(raw: list[str | None]) -> list[str]:
    """`normalise_text` of each row: ASCII rows (nearly all rows of most tables, and NFC leaves
    them as they are) at once in Arrow, the others one by one in Python, as ever."""
    try:
        array = large_strings(["" if text is None else text for text in raw])  # null normalises to empty
    except AttributeError:  # not all strings: `normalise_text` says what to each
        return [normalise_text(text) if isinstance(text, str) else "" for text in raw]
    collapsed = pc.utf8_trim(pc.replace_substring_regex(array, _ASCII_WHITESPACE, " "), " ")
    keys = collapsed.to_pylist()
    for i in pc.indices_nonzero(pc.invert(pc.string_is_ascii(array))).to_pylist():
        keys[i] = normalise_text(raw[i])
    return keys


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
