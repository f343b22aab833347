"""Distinct texts are counted exactly, though most runs keep no set of texts apart from chunks:
short texts equal to long texts' chunks, in any order, in one process or merged from several."""

import random

import numpy as np
import pytest

from pipeline.run import counts
from pipeline.run.counts import RunCounter

PIECES = [f"piece {i}" for i in range(12)]  # few, so that texts and chunks meet each other often


def random_batches(seed: int, batches: int = 12) -> list[list[tuple[str, ...]]]:
    """Batches of texts, each text as its chunks: one chunk (a short text, its own chunk) or several."""
    rng = random.Random(seed)
    return [
        [tuple(rng.sample(PIECES, rng.choice([1, 1, 1, 2, 3]))) for _ in range(rng.randint(1, 8))]
        for _ in range(batches)
    ]


def meet(counter: RunCounter, batch: list[tuple[str, ...]]) -> None:
    """What `TextEmbedder.prepare` tells the counter of one batch (texts distinct, chunks distinct)."""
    texts = {" | ".join(chunks): chunks for chunks in batch}  # a long text's string is not any chunk's
    long = {text for text, chunks in texts.items() if len(chunks) > 1}
    names = list(texts)
    chunks = names if not long else list(dict.fromkeys(c for text in names for c in texts[text]))
    counter.met(len(batch), 0, names, chunks, np.zeros(len(chunks), dtype=bool), long)


def expected(batches: list[list[tuple[str, ...]]]) -> tuple[int, int]:
    texts = {" | ".join(chunks) for batch in batches for chunks in batch}
    chunks = {c for batch in batches for chunks in batch for c in chunks}
    return len(texts), len(chunks)


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("processes", [1, 3])  # 3: two workers' counts merged into the flow's, which met some too
@pytest.mark.parametrize("together", [1, counts.COUNT_TOGETHER])  # each batch counted as met, or batches together
def test_distinct_texts_and_chunks_are_counted_once_each(seed, processes, together, monkeypatch):
    monkeypatch.setattr(counts, "COUNT_TOGETHER", together)
    batches = random_batches(seed)
    if processes == 1:
        run = RunCounter()
        for batch in batches:
            meet(run, batch)
    else:
        run, workers = RunCounter(), [RunCounter(), RunCounter()]
        for i, batch in enumerate(batches):
            meet([run, *workers][i % 3], batch)
        for worker in workers:
            run.merge(worker.stats, *worker.export())
    assert (run.stats.distinct_texts, run.stats.chunks) == expected(batches)


def test_a_run_of_short_texts_keeps_no_set_of_texts_of_its_own():
    run = RunCounter()
    meet(run, [(p,) for p in PIECES])
    meet(run, [(p,) for p in PIECES[::2]])
    texts = run._texts
    assert run.stats.distinct_texts == len(PIECES)
    assert not any(len(s) for s in (texts.long, texts.only_chunks, texts.late, texts.elsewhere))
