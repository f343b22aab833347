"""Deterministic English-like prose of a chosen length, for chunking tests."""

import random

from pipeline.text.tokens import count_tokens

WORDS = "the a cat dog sat ran over under quickly slowly house river garden reads writes".split()


def long_prose(tokens: int, seed: int = 0) -> str:
    """Paragraphs of sentences, just over `tokens` cl100k tokens long."""
    rng = random.Random(seed)
    paragraphs, total = [], 0
    while total < tokens:
        paragraph = " ".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))).capitalize() + "." for _ in range(rng.randint(2, 8)))
        paragraphs.append(paragraph)
        total += count_tokens(paragraph) + 1
    return "\n\n".join(paragraphs)
