import random
import subprocess
import sys
from pathlib import Path

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


# In a fresh interpreter: the encoding loaded ahead in a thread while the caller asks for it too.
LOADED_AHEAD = """
from pipeline.text import tokens

tokens.load_tokenizer_ahead()
print(tokens.count_tokens("hello world"), tokens._loaded_cl100k_base.cache_info().misses)
"""


@pytest.mark.parametrize("program, expected", [(LOADED_AHEAD, "2 1")])  # two tokens; the encoding read once
def test_a_tokenizer_loaded_ahead_is_read_once_though_the_run_asks_at_once(program, expected):
    ran = subprocess.run(
        [sys.executable, "-c", program], cwd=Path(__file__).parents[3], capture_output=True, text=True, timeout=60
    )
    assert (ran.stdout.strip(), ran.stderr) == (expected, "")
