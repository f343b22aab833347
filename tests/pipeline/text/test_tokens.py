import random

import pytest

from pipeline.text.normalise import normalise_text
from pipeline.text.tokens import count_many, count_tokens

# Pieces that tokenise awkwardly at a text's ends: punctuation runs, contractions, digits,
# non-Latin letters, emoji, a special token's text, and every kind of whitespace.
PIECES = [
    "word",
    "Word",
    "'s",
    "'ll",
    "n't",
    ".",
    "...",
    "?!",
    "(",
    ")",
    "12345",
    "3.14",
    "café",
    "e\u0301",
    "日本語",
    "😀",
    "<|endoftext|>",
    "-",
    "--",
    "#",
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "\u00a0",
    "\u3000",
    "",
]


def texts(seed: int, count: int = 400) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(PIECES, k=rng.randint(0, 8))) for _ in range(count)]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("normalised", [True, False], ids=["normalised", "raw"])
def test_texts_counted_together_count_as_each_alone(seed, normalised):
    batch = [normalise_text(text) for text in texts(seed)] if normalised else texts(seed)
    assert count_many(batch) == [count_tokens(text) for text in batch]


def test_a_batch_longer_than_one_call_is_counted_in_pieces(monkeypatch):
    monkeypatch.setattr("pipeline.text.tokens._JOINED_CHARS", 64)
    batch = [normalise_text(text) for text in texts(7, 200)]
    assert count_many(batch) == [count_tokens(text) for text in batch]


def test_no_texts_no_counts():
    assert count_many([]) == []
