import random

import pytest

from pipeline.text.chunking import chunk_by_tokens
from pipeline.text.normalise import normalise_paragraphs
from pipeline.text.tokens import count_tokens

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()


def prose(paragraphs: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    sentence = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 25))).capitalize() + "."
    return "\n\n".join(" ".join(sentence() for _ in range(rng.randint(1, 8))) for _ in range(paragraphs))


TEXTS = {
    "prose": prose(200),
    "one huge paragraph": prose(200).replace("\n\n", " "),
    "no spaces at all": "x" * 60_000,
    "multibyte runs": "漢字😀é" * 8_000,
    "mixed": prose(20) + "\n\n" + "y" * 5_000 + " " + "🙂" * 3_000,
}


@pytest.mark.parametrize("name", TEXTS)
@pytest.mark.parametrize("max_tokens, overlap", [(512, 64), (64, 8), (8, 0)])
def test_chunks_respect_the_limit_and_tile_the_text(name, max_tokens, overlap):
    paragraphs = normalise_paragraphs(TEXTS[name])
    text = " ".join(paragraphs)
    chunks = chunk_by_tokens(paragraphs, max_tokens, overlap)
    assert all(c.tokens == count_tokens(c.text) <= max_tokens for c in chunks)
    assert all(text[c.start : c.end] == c.text for c in chunks)
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    assert all(b.start <= a.end + 1 for a, b in zip(chunks, chunks[1:])), "a gap between chunks loses text"


def test_short_text_is_one_chunk():
    [chunk] = chunk_by_tokens(["Hello world."], 512, 64)
    assert (chunk.text, chunk.start, chunk.end) == ("Hello world.", 0, 12)


def test_splits_fall_on_paragraphs_then_sentences():
    paragraphs = normalise_paragraphs(TEXTS["prose"])
    chunks = chunk_by_tokens(paragraphs, 256, 0)
    assert all(c.text.endswith(".") for c in chunks)
    paragraph_starts = {p.split(" ")[0] for p in paragraphs}
    assert sum(c.text.split(" ")[0] in paragraph_starts for c in chunks) >= len(chunks) // 2


def test_overlap_repeats_whole_words():
    paragraphs = normalise_paragraphs(TEXTS["one huge paragraph"])
    chunks = chunk_by_tokens(paragraphs, 128, 32)
    overlaps = [a.end - b.start for a, b in zip(chunks, chunks[1:])]
    assert all(o > 0 for o in overlaps)
    assert all(count_tokens(" ".join(paragraphs)[b.start : a.end]) <= 32 for a, b in zip(chunks, chunks[1:]))


def test_a_100k_token_text_is_chunked_quickly_and_completely():
    text = prose(2_500, seed=1)
    assert count_tokens(text) > 100_000
    chunks = chunk_by_tokens(normalise_paragraphs(text), 8192, 0)
    assert len(chunks) >= 13 and max(c.tokens for c in chunks) <= 8192


def test_empty_text_has_no_chunks():
    assert chunk_by_tokens([], 512, 64) == []


def test_runs_without_sentence_ends_still_overlap():
    text = " ".join(f"word{i}" for i in range(5_000))  # no sentence boundary anywhere
    chunks = chunk_by_tokens([text], 200, 40)
    assert all(c.tokens <= 200 for c in chunks)
    assert all(0 < a.end - b.start and count_tokens(text[b.start : a.end]) <= 40 for a, b in zip(chunks, chunks[1:]))
