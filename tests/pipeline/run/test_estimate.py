import pytest

from pipeline.errors import ConfigError
from pipeline.run.estimate import BudgetError, Estimate, estimate_config, load_prices
from pipeline.run.steps import run_pipeline
from tests.conftest import openai_config, write_parquet

TEXTS = ["the cat sat on the mat", "a dog barked", None, "the cat sat on the mat", "x " * 3_000]


@pytest.fixture
def source(tmp_path):
    return write_parquet(tmp_path / "in" / "docs.parquet", {"id": list(range(len(TEXTS))), "text": TEXTS})


@pytest.mark.parametrize("cached_first", [0, 2, 5])  # rows embedded by an earlier run into the cache
def test_the_estimate_is_what_the_run_then_sends(tmp_path, fake_openai, source, cached_first):
    config = openai_config(tmp_path, fake_openai, source, chunking__max_tokens=1_000, embedding__batch_size=2)
    if cached_first:
        part = write_parquet(tmp_path / "part" / "p.parquet", {"id": list(range(cached_first)), "text": TEXTS[:cached_first]})
        run_pipeline(openai_config(tmp_path, fake_openai, part, output__path=str(tmp_path / "warm")))
    requests = fake_openai.requests
    estimate = estimate_config(config, api_key=None)
    assert fake_openai.requests == requests  # the estimate called nothing
    stats = run_pipeline(config)["stats"]
    assert (estimate.tokens_to_send, estimate.requests, estimate.cache_hits) == (stats["embedded_tokens"], stats["requests"], stats["cache_hits"])
    assert (estimate.rows, estimate.distinct_texts, estimate.chunks) == (5, 3, stats["chunks"])
    assert estimate.sync_usd == pytest.approx(stats["embedded_tokens"] * 0.02 / 1e6)
    assert stats["cost_usd"] == pytest.approx(estimate.sync_usd, abs=1e-6)


@pytest.mark.parametrize("limit, runs", [(0.00001, False), (1.0, True)])
def test_a_run_over_budget_stops_before_its_first_call(tmp_path, fake_openai, source, limit, runs):
    config = openai_config(tmp_path, fake_openai, source, embedding__max_cost_usd=limit)
    if runs:
        assert run_pipeline(config)["stats"]["embedded_tokens"] > 0
        return
    with pytest.raises(BudgetError, match=r"would cost \$0\.000027 \(1,346 tokens through openai\), \$0\.000017 over embedding\.max_cost_usd \$0\.000010; raise the limit"):
        run_pipeline(config)
    assert fake_openai.requests == 0
    assert not list((tmp_path / "out").glob("*.parquet"))


def test_a_price_table_of_your_own_prices_your_models(tmp_path, fake_openai, source):
    table = tmp_path / "prices.yaml"
    table.write_text("my-model: {sync: 1.0, batch: 0.5}\n")
    assert load_prices(table) == {"my-model": {"sync": 1.0, "batch": 0.5}}
    config = openai_config(tmp_path, fake_openai, source, embedding__price_table=str(table), embedding__model="my-model")
    fake_openai.models = ("my-model",)
    estimate = estimate_config(config.model_copy(update={"embedding": config.embedding.model_copy(update={"dimensions": 16})}), None)
    assert estimate.sync_usd == pytest.approx(estimate.tokens_to_send / 1e6) and estimate.batch_usd == pytest.approx(estimate.sync_usd / 2)


@pytest.mark.parametrize("overrides, error", [
    ({"embedding__model": "no-such-model", "embedding__dimensions": 8, "embedding__max_cost_usd": 1.0}, "has no price for no-such-model"),
    ({"embedding__model": "no-such-model", "embedding__dimensions": None}, "embedding.dimensions: no-such-model would be asked"),
    ({"embedding__price_table": "/nonexistent/prices.yaml", "embedding__max_cost_usd": 1.0}, "embedding.price_table /nonexistent/prices.yaml: cannot read"),
])
def test_what_an_estimate_cannot_know_is_one_clear_error(tmp_path, fake_openai, source, overrides, error):
    config = openai_config(tmp_path, fake_openai, source, **overrides)
    with pytest.raises(ConfigError, match=error):
        estimate_config(config, None) if "max_cost_usd" not in str(overrides) else run_pipeline(config)
    assert fake_openai.requests == 0


def test_a_price_table_that_cannot_be_read_stops_a_run_before_it_spends(tmp_path, fake_openai, source):
    config = openai_config(tmp_path, fake_openai, source, embedding__price_table=str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="embedding.price_table .*missing.yaml: cannot read"):
        run_pipeline(config)
    assert fake_openai.requests == 0


def test_an_unpriced_model_is_estimated_with_its_cost_unknown():
    lines = Estimate("openai", "mystery", rows=1, minutes=0.5).lines()
    assert "cost: unknown (no price for this model) through the embeddings endpoint" in lines[4]
