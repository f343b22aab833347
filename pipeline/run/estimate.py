"""What a run would send and cost, worked out from the input, the cache and the last output.

The estimate walks the input exactly as a run does — unchanged files kept, rows equal to the
last output reused, texts normalised, deduplicated and chunked, chunks looked up — and packs
the misses into requests as the provider would. It makes no embedding call, so its token
count is the count a run then sends, barring retries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from pipeline.cache.tiered import open_cache
from pipeline.cache.vectors import VectorCache
from pipeline.config import Config, EmbeddingConfig
from pipeline.errors import ConfigError, EmbedpipeError
from pipeline.hashset import HashSet
from pipeline.incremental.unchanged_files import PreviousOutput, settings_key
from pipeline.incremental.unchanged_rows import prepared_batches
from pipeline.providers import get_embedder, provider_class
from pipeline.providers.base import Embedder
from pipeline.providers.packing import next_batch, pack_batches
from pipeline.remote import localised
from pipeline.run.embed import TextEmbedder
from pipeline.sources.partitions import first_texts, plan_partitions
from pipeline.sources.reader import SourcePlan, validate_source
from pipeline.text.chunking import chunk_limits

PRICE_TABLE = Path(__file__).resolve().parents[2] / "configs" / "prices.yaml"


@dataclass
class Estimate:
    """Counts a run would produce, and what sending its misses costs."""

    provider: str
    model: str
    rows: int = 0
    unchanged_rows: int = 0
    reused_rows: int = 0
    distinct_texts: int = 0
    chunks: int = 0
    cache_hits: int = 0  # chunks = cache_hits + chunks_to_send, each chunk counted once, as in a run's summary
    chunks_to_send: int = 0
    tokens_to_send: int = 0
    requests: int = 0
    sync_usd: float | None = None  # None: the price table has no entry for the model
    batch_usd: float | None = None
    minutes: float | None = None  # the least time the rate limits allow; None for local and batch
    price_kind: str | None = "sync"  # the price it is billed at (the provider's `price_kind`); None: free
    pace: str = "rate limits"  # what sets its time: "rate limits", "batch api" or "none"

    @property
    def cost_usd(self) -> float | None:
        """The cost through the configured provider."""
        return {None: 0.0, "batch": self.batch_usd}.get(self.price_kind, self.sync_usd)

    def as_dict(self) -> dict:
        return {**asdict(self), "cost_usd": self.cost_usd}

    def lines(self) -> list[str]:
        """The estimate as a person reads it."""

        def money(amount: float | None) -> str:
            return "unknown (no price for this model)" if amount is None else usd(amount)

        return [
            f"estimate for {self.model} through {self.provider}; nothing was sent",
            f"  rows {self.rows:,} ({self.unchanged_rows:,} in unchanged files, {self.reused_rows:,} equal to the "
            "last output)",
            f"  distinct texts {self.distinct_texts:,}, chunks {self.chunks:,}, cache hits {self.cache_hits:,}",
            f"  to send: chunks {self.chunks_to_send:,}, tokens {self.tokens_to_send:,}, requests {self.requests:,}",
            f"  cost: {money(self.sync_usd)} through the embeddings endpoint, {money(self.batch_usd)} through the "
            "Batch API",
            f"  time: {self._time()}",
        ]

    def _time(self) -> str:
        if self.pace == "none":
            return f"no rate limit ({self.provider})"
        if self.pace == "batch api":
            return "within the Batch API's 24 h window"
        if self.minutes is None:
            return "as fast as the server's rate limits allow (no limits configured: they come with its answers)"
        return f"at least {self.minutes:,.1f} min at the configured rate limits"


def checked_input(config: Config) -> tuple[SourcePlan, PreviousOutput | None]:
    """The validated input, and the last output an incremental run compares it with (none
    when a chunk table is written: reuse covers the rows table only)."""
    previous = PreviousOutput(config.output.path, settings_key(config)) if not config.output.chunks_path else None
    unchanged = previous.unchanged if previous else (lambda file: False)
    return validate_source(config.source, output_column=config.output.vector_column, unchanged=unchanged), previous


def estimate_run(
    config: Config,
    plan: SourcePlan,
    previous: PreviousOutput | None,
    embedder: Embedder,
    cache: VectorCache,
    max_tokens: int,
    overlap: int,
) -> Estimate:
    """Walk the checked input as a run would and count what it would send; calls no model."""
    texts = TextEmbedder(embedder, cache, max_tokens, overlap)
    sent, estimate = HashSet(), Estimate(config.embedding.provider, config.embedding.model, **_pricing(embedder))
    for partition in plan_partitions(plan, config.source.partition_rows):
        if previous is not None and previous.part_for(partition) is not None:
            texts.counts.skipped(partition.rows, unchanged=True)
            continue
        for _, _, rows in prepared_batches(config, texts, previous, partition):
            misses = rows.misses  # a chunk missed once is missed whenever met: the cache is only read here
            new = [
                (text, tokens) for (text, tokens), fresh in zip(misses.items(), sent.add_many(list(misses))) if fresh
            ]
            counts = [tokens for _, tokens in new]
            estimate.chunks_to_send += len(new)
            estimate.tokens_to_send += sum(counts)
            estimate.requests += _requests(counts, embedder, first=not estimate.requests)
    stats = texts.stats
    estimate.rows, estimate.unchanged_rows, estimate.reused_rows = stats.rows, stats.unchanged_rows, stats.reused_rows
    estimate.distinct_texts, estimate.chunks, estimate.cache_hits = stats.distinct_texts, stats.chunks, stats.cache_hits
    _price(estimate, config)
    return estimate


def estimate_config(config: Config, api_key: str | None) -> Estimate:
    """`embedpipe estimate`: open the provider (no call; no key needed) and the cache, and estimate."""
    config, _ = localised(config)
    embedder = get_embedder(config.embedding, api_key or "not-needed-for-an-estimate")
    try:
        if not embedder.knows_dimensions:
            raise ConfigError(
                f"embedding.dimensions: {embedder.model} would be asked its dimensions, and an estimate calls "
                "nothing; set it"
            )
        max_tokens, overlap = chunk_limits(config.chunking, embedder.max_input_tokens, embedder.model)
        plan, previous = checked_input(config)
        if embedder.needs_sample:  # which cache namespace the run would read: chosen as the run would choose
            embedder.choose(first_texts(plan, config.source, embedder.sample_size))
        cache = open_cache(config.cache, embedder)  # the shared tier's vectors are paid for too
        try:
            return estimate_run(config, plan, previous, embedder, cache, max_tokens, overlap)
        finally:
            cache.close()
    finally:
        embedder.close()


def check_budget(estimate: Estimate, limit: float) -> None:
    """Stop before the first call when the run would cost more than `embedding.max_cost_usd`."""
    cost = estimate.cost_usd
    if cost is None:
        raise ConfigError(
            f"embedding.max_cost_usd is set but the price table has no price for {estimate.model}; add it "
            "(embedding.price_table)"
        )
    if cost > limit:
        raise BudgetError(
            f"this run would cost {usd(cost)} ({estimate.tokens_to_send:,} tokens through {estimate.provider}), "
            f"{usd(cost - limit)} over embedding.max_cost_usd {usd(limit)}; raise the limit or embed fewer rows"
        )


def usd(amount: float) -> str:
    """Dollars to the cent, or to a millionth below a dollar: small runs cost fractions of a cent."""
    return f"${amount:,.2f}" if amount >= 1 else f"${amount:.6f}"


class BudgetError(EmbedpipeError):
    """The estimated cost exceeds embedding.max_cost_usd."""


def load_prices(path: str | Path | None) -> dict[str, dict[str, float]]:
    """The price table: model -> {"sync": USD per 1M tokens, "batch": ...}."""
    path = Path(path) if path else PRICE_TABLE
    try:
        table = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return {
            str(model): {kind: float(prices[kind]) for kind in ("sync", "batch")} for model, prices in table.items()
        }
    except (OSError, yaml.YAMLError, TypeError, KeyError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"embedding.price_table {path}: cannot read it as model: {{sync: USD, batch: USD}} per million tokens "
            f"({type(exc).__name__})"
        ) from None


def _pricing(embedder: Embedder) -> dict:
    """How the provider bills and what paces it, as the estimate records them."""
    pace = "batch api" if embedder.uses_batch_api else "rate limits" if embedder.rate_limited else "none"
    return {"price_kind": embedder.price_kind, "pace": pace}


def model_price(embedding: EmbeddingConfig) -> dict[str, float] | None:
    """USD per million tokens, {"sync": ..., "batch": ...}, for the configured model: nothing
    for a free provider (a local model), None where the price table has no entry for it."""
    if provider_class(embedding.provider).price_kind is None:
        return {"sync": 0.0, "batch": 0.0}
    return load_prices(embedding.price_table).get(embedding.model)


def run_cost(price: dict[str, float] | None, sync_tokens: int, batch_tokens: int = 0) -> float | None:
    """What tokens sent through the endpoint and the Batch API cost at `price` (`model_price`)."""
    return None if price is None else round((sync_tokens * price["sync"] + batch_tokens * price["batch"]) / 1e6, 6)


def _requests(counts: list[int], embedder: Embedder, first: bool) -> int:
    """The requests `counts` take, the run's `first` (a smaller one, for a metered provider) among them."""
    first_tokens, tokens = embedder.planned_batch_tokens
    start = next_batch(counts, 0, embedder.batch_inputs, first_tokens).stop if first and counts else 0
    return int(start > 0) + sum(1 for _ in pack_batches(counts[start:], embedder.batch_inputs, tokens))


def _price(estimate: Estimate, config: Config) -> None:
    embedding = config.embedding
    price = model_price(embedding)
    if price is not None:
        estimate.sync_usd = estimate.tokens_to_send * price["sync"] / 1e6
        estimate.batch_usd = estimate.tokens_to_send * price["batch"] / 1e6
    if estimate.pace == "rate limits":  # the configured caps only: the server's own limits come with its answers
        bounds = [
            (estimate.tokens_to_send, embedding.tokens_per_minute),
            (estimate.requests, embedding.requests_per_minute),
        ]
        known = [amount / limit for amount, limit in bounds if limit]
        estimate.minutes = max(known) if known else None
