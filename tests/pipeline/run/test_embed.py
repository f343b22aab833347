import numpy as np
import pyarrow as pa
import pytest

from pipeline.cache.vectors import VectorCache
from pipeline.hashset import hash64
from pipeline.providers import get_embedder
from pipeline.run.embed import TextEmbedder, chunk_rows
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


ROWS = ["b  text", None, "a text", "   ", "b text", "a\ttext", ""]


@pytest.mark.parametrize(
    "column",
    [ROWS, pa.array(ROWS, pa.string()), pa.array(ROWS, pa.large_string()), pa.chunked_array([ROWS[:2], ROWS[2:]])],
    ids=["list", "string", "large_string", "chunked"],
)
def test_rows_hold_their_distinct_text_in_the_order_first_met_and_blanks_hold_none(column):
    rows = chunk_rows(column, max_tokens=512, overlap_tokens=0)
    assert rows.texts == ["b text", "a text"]
    assert rows.rows.tolist() == [0, -1, 1, -1, 0, 1, -1]
    assert (rows.blank, rows.long) == (3, {})
    assert rows.chunk_hashes().tolist() == hash64(["b text", "a text"]).tolist()  # counted as a list's would be


@pytest.mark.parametrize("as_arrow", [False, True])
def test_a_long_text_is_chunked_at_the_paragraphs_of_the_last_row_holding_it(as_arrow):
    one, two = "word " * 30, "more " * 30
    raws = [f"{one}{two}", f"{one}\n\n{two}", "short"]  # the same normalised text, paragraphs only in the second
    rows = chunk_rows(pa.array(raws) if as_arrow else raws, max_tokens=40, overlap_tokens=0)
    assert rows.rows.tolist() == [0, 0, 1]
    assert [c.text for c in rows.chunks_of(rows.texts[0])] == [one.strip(), two.strip()]
    assert rows.chunks_of("short")[0].text == "short"


def test_each_row_gets_its_texts_vector_and_a_blank_row_none(tmp_path, fake_openai):
    texts = worker(tmp_path, fake_openai, "a")
    result = texts.complete(texts.prepare(["one", None, "two", "one", " "]))
    assert result.present.tolist() == [True, False, True, True, False]
    np.testing.assert_array_equal(result.matrix[0], result.matrix[3])
    assert not result.matrix[[1, 4]].any()
    assert [e.chunks[0].text if e else None for e in result.embedded_texts()] == ["one", None, "two", "one", None]
