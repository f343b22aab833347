import random

import pyarrow as pa
import pytest

from pipeline.text.normalise import (
    normalise_column,
    normalise_paragraphs,
    normalise_text,
    normalised_array,
    render_template,
    template_fields,
)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  hello   world \n", "hello world"),
        ("tabs\tand\r\nCRLF", "tabs and CRLF"),
        ("cafe\u0301", "caf\u00e9"),  # NFD in, NFC out
        ("a\u00a0b\u2003c", "a b c"),  # Unicode spaces collapse too
        ("", ""),
        ("   \n\t ", ""),
        (None, ""),
    ],
)
def test_normalise_text(raw, expected):
    assert normalise_text(raw) == expected
    assert normalise_column([raw]) == [expected]  # a column at once: the same text, ASCII or not


# Every character str.split() splits at, ASCII or not, and what NFC changes: a column of them
# is normalised at once exactly as row by row.
AWKWARD = [chr(c) for c in range(0x3100) if chr(c).isspace()] + ["e\u0301", "\u212b", "x", "", "\n\n"]


@pytest.mark.parametrize("seed", range(5))
def test_a_column_is_normalised_as_each_of_its_rows(seed):
    rng = random.Random(seed)
    rows = ["".join(rng.choices(AWKWARD, k=rng.randint(0, 12))) for _ in range(300)] + [None]
    assert normalise_column(rows) == [normalise_text(row) for row in rows]


def test_a_column_holding_other_than_strings_is_normalised_row_by_row():
    assert normalise_column(["a  b", 3, None]) == ["a b", "", ""]


def test_paragraphs_join_to_the_normalised_text():
    raw = "First  para\nstill first.\n\n \n Second para.\n\n\n"
    assert normalise_paragraphs(raw) == ["First para still first.", "Second para."]
    assert " ".join(normalise_paragraphs(raw)) == normalise_text(raw)


@pytest.mark.parametrize(
    "columns, expected",
    [
        ({"title": ["T"], "body": ["B"]}, ["T\n\nB"]),
        ({"title": [None], "body": ["B"]}, ["\n\nB"]),
        ({"title": [None], "body": [None]}, [None]),
    ],
)
def test_render_template(columns, expected):
    assert render_template("{title}\n\n{body}", columns) == expected


def test_template_fields_in_order_without_repeats():
    assert template_fields("{b} {a} {b:>5}") == ["b", "a"]


ROWS = ["  a  b ", "plain", None, "caf\u00e9\u00a0 x", "", "\t", "x\ny"]


@pytest.mark.parametrize(
    "column",
    [
        pa.array(ROWS, pa.string()),
        pa.array(ROWS, pa.large_string()),
        pa.array(ROWS, pa.string_view()),
        pa.array(ROWS, pa.string()).dictionary_encode(),
        pa.chunked_array([ROWS[:3], ROWS[3:]], pa.string()),
        pa.array(ROWS[2:3], pa.null()),
    ],
    ids=["string", "large_string", "string_view", "dictionary", "chunked", "null"],
)
def test_an_arrow_column_is_normalised_as_its_rows(column):
    rows = column.to_pylist()
    assert normalised_array(column).to_pylist() == [normalise_text(row) for row in rows]
