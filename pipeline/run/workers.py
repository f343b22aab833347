"""Partitions embedded in other processes — a Dask cluster's workers — within one rate limit.

The flow prepares the run as always (input checked, output staged and locked), then hands
each worker a `RunSpec`: plain data, no live client, cache or open file. The worker reopens
the provider, the cache and the staging directory from it, embeds the partition, and sends
back a `PartitionResult` that `absorb` folds into the flow's counts.

Each worker process keeps one embedder a run — one pair of buckets, one learned window — that
spends a share of the limits (and of the budget left that the server's headers report). On a
Dask cluster (`RunSpec.coordinated`) the share follows demand: the coordinator on the scheduler
splits the limit among the workers drawing budget, and claims on texts are kept there too, so
that hosts without a shared disk do not pay twice (`pipeline.run.coordinator`). Elsewhere (a
pool of processes on one machine) each of N processes spends 1/N and claims in the shared
cache. Either way no request waits on a network round trip to a coordinator.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections import OrderedDict
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.cache.tiered import open_cache, settled_shared_counts
from pipeline.config import Config, EmbeddingConfig
from pipeline.errors import EmbedpipeError
from pipeline.incremental.unchanged_files import PreviousOutput
from pipeline.providers import get_embedder
from pipeline.providers.base import Embedder
from pipeline.run.coordination import member_name
from pipeline.run.counts import RunStats
from pipeline.run.embed import TextEmbedder
from pipeline.run.remote_parts import RemoteParts, remote_parts
from pipeline.run.steps import Run, RunInput, RunOutput, embed_partition
from pipeline.sinks.parquet import ParquetSink
from pipeline.sources.partitions import Partition
from pipeline.sources.reader import SourcePlan

if TYPE_CHECKING:
    from pipeline.run.coordinator import CoordinatorLink, SharePoller


@dataclass(frozen=True)
class RunSpec:
    """What a worker process needs to embed any partition of a prepared run. Never the API
    key: each worker reads it from its own environment or the Prefect Secret block."""

    config: Config  # with this worker's share of the rate limit
    plan: SourcePlan
    partitions: list[Partition]
    metadata: dict
    run_key: str  # names the staging directory the flow created
    previous: PreviousOutput | None
    sources: dict[int, dict]
    max_tokens: int
    overlap_tokens: int
    workers: int = 1  # processes sharing the key: each spends 1/workers of what the server allows
    coordinated: bool = False  # on a Dask cluster whose scheduler runs `Coordinator`: shares and claims from it
    remote: RemoteParts | None = None  # input fetched and parts staged through the object store


@dataclass(frozen=True)
class PartitionResult:
    """What a worker did for one partition."""

    index: int
    rows: int
    stats: RunStats  # what the partition counted
    texts: np.ndarray  # hash64 of each distinct text
    chunks: dict[str, np.ndarray]  # `ChunkTally.export`: the chunks met, and how each was had
    sender: str  # the worker process's embedder
    sent: RunStats  # what that embedder sent in the run, all its partitions so far


def shared_config(config: Config, workers: int) -> Config:
    """`config` with 1/`workers` of the requests in flight. The rates are shared by each
    process's embedder (`Embedder.share_limits`): of the caps and of the server's limits."""
    embedding = config.embedding
    if embedding.max_concurrency is None:
        return config
    share = embedding.model_copy(update={"max_concurrency": max(1, embedding.max_concurrency // workers)})
    return config.model_copy(update={"embedding": share})


def run_spec(run: Run, workers: int, coordinated: bool = False) -> RunSpec:
    """The picklable half of a prepared run, for `workers` worker processes; `coordinated`:
    on a Dask cluster whose scheduler runs the coordinator."""
    return RunSpec(
        shared_config(run.config, workers),
        run.input.plan,
        run.input.partitions,
        run.output.metadata,
        run.output.rows.run_key,
        run.input.previous,
        run.input.sources,
        run.texts.max_tokens,
        run.texts.overlap_tokens,
        workers,
        coordinated,
        remote_parts(
            run.input.source_url,
            Path(run.config.cache.path) / "remote" / "inputs",
            {str(remote.local): remote.url for remote in run.output.remote_outputs},
            run.output.rows.run_key,
        ),
    )


@dataclass
class ProcessEmbedder:
    """A worker process's embedder for one run, and (on a coordinated cluster) its line to the
    coordinator and the poller that keeps its rate-limit share."""

    embedder: Embedder
    link: CoordinatorLink | None = None
    poller: SharePoller | None = None

    def close(self) -> None:
        if self.poller is not None:
            self.poller.close()
        self.embedder.close()


_embedders: OrderedDict[tuple[str, str], ProcessEmbedder] = OrderedDict()  # by run and settings; the last few kept
_embedders_lock = threading.Lock()
_KEPT_EMBEDDERS = 4
# A worker's first requests leave a freshly started process, on a machine busy starting the
# others, up to a second or more after their budget was counted: the server's minute starts
# that much later than the worker's. Its buckets start refilling this much later (once a
# run), or their banked minute would run out at the server before it does here.
WORKER_REFILL_DELAY = 2.0


def process_embedder(spec: RunSpec, api_key: str | None) -> tuple[str, ProcessEmbedder]:
    """This process's embedder for the run `spec` describes, and a name for it that no other
    process shares. Opened once per run and kept, so its rate-limit buckets remember what the
    process already spent (a fresh pair would start full) and a local model loads once."""
    digest = hashlib.sha256(
        f"{spec.run_key}{spec.config.embedding.model_dump_json()}".encode()
    ).hexdigest()  # never the API key
    key = (spec.run_key, digest)
    with _embedders_lock:
        kept = _embedders.get(key)
        if kept is not None and kept.embedder.stopped:
            # a fatal answer stopped it; the run started again (key or credit fixed) gets a fresh one
            _embedders.pop(key).close()
        if key not in _embedders:
            _embedders[key] = open_process_embedder(spec, api_key, digest[:12])
            while len(_embedders) > _KEPT_EMBEDDERS:
                _embedders.popitem(last=False)[1].close()
        _embedders.move_to_end(key)
        return f"{socket.gethostname()}:{os.getpid()}:{digest[:12]}", _embedders[key]


def close_run_embedders(run_key: str) -> int:
    """Close this process's embedders of the run `run_key`, which has ended: their pollers stop
    asking for a share and give theirs back. The flow calls it on every worker; how many closed."""
    with _embedders_lock:
        ended = [key for key in _embedders if key[0] == run_key]
        for key in ended:
            _embedders.pop(key).close()
    return len(ended)


def budget_pool(config: EmbeddingConfig, api_key: str | None) -> str:
    """The name of the rate-limit budget `config` draws from: its key's at its endpoint, shared by
    every run on the cluster that uses them (a digest: never the key itself)."""
    return hashlib.sha256(f"{api_key}\n{config.provider}\n{config.base_url}".encode()).hexdigest()[:16]


def open_process_embedder(spec: RunSpec, api_key: str | None, run_tag: str) -> ProcessEmbedder:
    """A new embedder spending 1/`spec.workers` of the limits; on a coordinated cluster, the
    share the coordinator gives it (as this process's member `run_tag` for this run) of the
    budget of its key, kept up to date."""
    embedder = get_embedder(spec.config.embedding, api_key)
    share = 1 / max(1, spec.workers)
    embedder.share_limits(share, WORKER_REFILL_DELAY)
    if not spec.coordinated:
        return ProcessEmbedder(embedder)
    from pipeline.run.coordinator import CoordinatorLink, SharePoller

    link = CoordinatorLink.here()
    if link is None:  # run outside a Dask worker (a test, a pool): the static share stands
        return ProcessEmbedder(embedder)
    if not embedder.rate_limited:
        return ProcessEmbedder(embedder, link)
    pool, member = budget_pool(spec.config.embedding, api_key), member_name(link.address, run_tag)
    return ProcessEmbedder(
        embedder, link, SharePoller(link, pool, member, embedder.wants_budget, embedder.share_limits, share)
    )


def embed_partition_in_worker(spec: RunSpec, index: int, api_key: str | None) -> PartitionResult:
    """Embed partition `index` of the run `spec` describes into its staged output part."""
    sender, kept = process_embedder(spec, api_key)
    embedder, config, remote = kept.embedder, spec.config, spec.remote
    if remote is not None:
        remote.fetch_input(spec.partitions[index], spec.sources[index])
    if not spec.partitions[index].file.exists():  # a local source.path, and a worker on another host
        raise EmbedpipeError(
            f"source.path: {spec.partitions[index].file} is not on worker host {socket.gethostname()}; with "
            "workers on other hosts, put the input on storage every worker sees (an s3:// path, say)"
        )
    cache = open_cache(config.cache, embedder)  # in front of config.cache.shared_path where set
    store = None
    if kept.link is not None:
        from pipeline.run.coordinator import CoordinatedClaims

        store = CoordinatedClaims(kept.link, embedder.cache_namespace)
    try:
        rows, chunks = _worker_sinks(spec)
        owner, tokens = f"{sender}:{index}", (spec.max_tokens, spec.overlap_tokens)
        texts = TextEmbedder(embedder, cache, *tokens, claim_owner=owner, claim_store=store)
        run = Run(
            config=config,
            input=RunInput(plan=spec.plan, partitions=spec.partitions, sources=spec.sources, previous=spec.previous),
            texts=texts,
            output=RunOutput(rows=rows, chunks=chunks, metadata=spec.metadata),
            started=0.0,
            owns_embedder=False,
        )
        sinks = [sink for sink in (chunks, rows) if sink is not None]  # chunks first: a rows part vouches for both
        # a part uploaded by an attempt whose worker died before it reported is fetched, not made again
        uploaded = [sink for sink in sinks if remote is not None and remote.fetch_part(sink, index)]
        written = embed_partition(run, index)
        for sink in sinks:
            if remote is not None and sink not in uploaded:
                remote.upload_part(sink, index)
    finally:
        cache.close()  # waits for the shared tier's writes
    texts.stats.shared_hits, texts.stats.shared_writes = settled_shared_counts(cache)
    return PartitionResult(
        index,
        written,
        deepcopy(texts.stats),
        *texts.counts.export(),
        sender,
        deepcopy(embedder.sent),
    )


def _worker_sinks(spec: RunSpec) -> tuple[ParquetSink, ParquetSink | None]:
    """The run's rows and chunk outputs as this worker writes them: into the flow's staging
    directory, or, where the output is on an object store, into one of its own."""
    output = spec.config.output

    def sink(path: str) -> ParquetSink:
        if spec.remote is not None:
            return spec.remote.staged_sink(path, spec.metadata)
        return ParquetSink(path, spec.metadata, spec.run_key, locked=False)

    return sink(output.path), sink(output.chunks_path) if output.chunks_path else None


def kept_by_the_flow(run: Run) -> dict[int, int]:
    """The partitions whose input is unchanged since the last output, kept by the flow itself
    (their parts adopted from its copy of that output, which a worker on another host lacks);
    each one's row count. The others are for the workers."""
    previous = run.input.previous
    if previous is None:
        return {}
    return {p.index: embed_partition(run, p.index) for p in run.input.partitions if previous.part_for(p) is not None}


def absorb(run: Run, result: PartitionResult) -> int:
    """Fold a worker's counts into the run's; returns the partition's row count. Request
    counts are each process's running totals (partitions in one process share its embedder):
    only what grew since that process's last result is added."""
    run.texts.counts.merge(result.stats, result.texts, result.chunks)
    last = run.elsewhere.get(result.sender, RunStats())
    if result.sent.requests >= last.requests:  # results of one process may arrive out of order
        run.elsewhere[result.sender] = result.sent
        run.texts.embedder.count_elsewhere(result.sent.since(last))
    return result.rows
