import pytest

from pipeline.text.normalise import normalise_paragraphs, normalise_text, render_template, template_fields


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
