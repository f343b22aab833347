"""Long texts stay right: the model reads every part of every chunk the pipeline cuts, whatever
the text is made of; a chunk with more WordPieces than the model reads is embedded in parts."""

import inspect
import json
import random

import numpy as np
import pytest

from pipeline.providers.local.backends import backend_names
from pipeline.text.chunking import chunk_by_tokens
from tests.chunking_text import long_prose


def _numbers_and_hashes() -> str:
    rng = random.Random(1)
    return " ".join(f"{rng.random() * 1e6:.3f} 0x{rng.getrandbits(64):016x} #{rng.randint(0, 99999)}" for _ in range(400))


def _urls() -> str:
    return " ".join(f"https://example.com/api/v2/items/{i}?sort=desc&page={i} user_{i}@mail.example.org" for i in range(150))


LONG_TEXTS = {
    "prose": long_prose(3000),
    "python code": inspect.getsource(json.decoder),
    "numbers and hashes": _numbers_and_hashes(),
    "accented and CJK": " ".join(["Über die Brücke gehen Äpfel, Öl und Straßenbahnen; élève, naïveté."] * 40 + ["東京の天気は晴れです。"] * 60),
    "urls and identifiers": _urls(),
}


@pytest.mark.parametrize("backend", backend_names())
@pytest.mark.parametrize("kind", LONG_TEXTS)
def test_the_model_reads_every_part_of_every_chunk_whole(embedders, backend, kind):
    embedder = embedders[backend]
    chunks = [chunk.text for chunk in chunk_by_tokens([LONG_TEXTS[kind]], embedder.max_input_tokens)]
    parts = embedder.backend.windows(chunks)
    assert ["".join(part for part, _ in chunk_parts) for chunk_parts in parts] == chunks  # nothing dropped
    if not embedder.backend.reads_any_length:
        assert max(embedder.backend.token_count(part) for chunk_parts in parts for part, _ in chunk_parts) <= (
            embedder.spec.max_seq_length
        )


@pytest.mark.parametrize("backend", backend_names())
def test_the_tail_of_a_chunk_longer_than_the_model_reads_still_counts(embedders, backend):
    embedder = embedders[backend]
    code = [chunk.text for chunk in chunk_by_tokens([LONG_TEXTS["python code"]], embedder.max_input_tokens)]
    longest = max(code, key=embedder.backend.token_count)
    assert embedder.backend.token_count(longest) > embedder.spec.max_seq_length  # the cl100k limit lets it through
    offsets = embedder.backend.wordpieces.encode(longest, add_special_tokens=False).offsets
    head = longest[: offsets[embedder.spec.max_seq_length - 2][0]]  # what a model that cuts would read
    whole, start = embedder.embed([longest, head], [1, 1])
    assert float(whole @ start) < 0.995
