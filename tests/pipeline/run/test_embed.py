import numpy as np

from pipeline.cache.vectors import VectorCache
from pipeline.providers import get_embedder
from pipeline.run.embed import TextEmbedder
from tests.conftest import openai_config


def worker(tmp_path, server, owner: str) -> TextEmbedder:
    """One cluster worker's embedder, claiming texts in a cache shared with the others."""
    config = openai_config(tmp_path, server, tmp_path / "unread.parquet")
    embedder = get_embedder(config.embedding, "sk-test")
    cache = VectorCache.for_embedder(config.cache.path, embedder)
    return TextEmbedder(embedder, cache, max_tokens=512, overlap_tokens=0, claim_owner=owner)


def test_a_text_another_worker_stored_after_this_one_looked_it_up_is_not_paid_for_again(tmp_path, fake_openai):
    texts = [f"shared ticket {i}" for i in range(6)]
    first, second = worker(tmp_path, fake_openai, "a"), worker(tmp_path, fake_openai, "b")
    looked_up = second.prepare(texts)  # every text missing from the cache, as yet
    expected = first.complete(first.prepare(texts)).matrix  # embedded, stored, claims let go
    got = second.complete(looked_up).matrix
    assert max(fake_openai.calls.values()) == 1
    np.testing.assert_array_equal(got, expected)
    assert (second.stats.cache_hits, second.stats.embedded_chunks, second.stats.in_flight_elsewhere) == (0, 0, 6)
