"""Partitions embedded in other processes, as a Dask cluster's workers embed them: the output,
the counts and the bill must be those of a run in one process."""

import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor

import pyarrow.parquet as pq
import pytest

from pipeline.errors import EmbedpipeError, ProviderError
from pipeline.providers import get_embedder
from pipeline.run.steps import close_run, finish_run, prepare_run, run_pipeline
from pipeline.run.workers import absorb, embed_partition_in_worker, run_spec, shared_config
from tests.conftest import openai_config, write_parquet
from tests.fakes.openai_server import FakeOpenAI

SHARED = [f"said in both files {i}" for i in range(40)]


@pytest.fixture
def two_files(tmp_path):
    for name, own in (("a", 30), ("b", 50)):
        texts = [f"only in {name} {i}" for i in range(own)] + SHARED + [None, SHARED[0]]
        write_parquet(tmp_path / "in" / f"{name}.parquet", {"id": [f"{name}{i}" for i in range(len(texts))], "text": texts})
    return tmp_path / "in"


@pytest.mark.parametrize(
    "workers, rpm, tpm, concurrency",
    [(1, 3000, 1_000_000, 8), (2, 1500, 500_000, 4), (3, 1000, 333_333, 2), (16, 187.5, 62_500, 1), (4, None, None, None)],
)
def test_each_worker_process_gets_an_equal_share_of_the_configured_caps(tmp_path, fake_openai, workers, rpm, tpm, concurrency):
    caps = {"requests_per_minute": 3000, "tokens_per_minute": 1_000_000, "max_concurrency": 8} if rpm else {}
    config = shared_config(openai_config(tmp_path, fake_openai, tmp_path / "in", **{f"embedding__{k}": v for k, v in caps.items()}), workers)
    embedder = get_embedder(config.embedding, None)
    embedder.share_limits(1 / workers)
    limits = embedder.limiter.limit("requests"), embedder.limiter.limit("tokens")
    assert limits == pytest.approx((rpm, tpm), abs=1) if rpm else limits == (None, None)  # unset stays unset
    assert config.embedding.max_concurrency == concurrency
    embedder.close()


def run_in_worker_processes(config, processes: int) -> dict:
    """The embed flow's Dask path without Dask: partitions in `processes` other processes."""
    run = prepare_run(config)
    spec = run_spec(run, processes)
    pickle.dumps(spec)  # it travels to the workers: plain data only
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(embed_partition_in_worker, spec, i, None) for i in range(len(run.input.partitions))]
        parts = {i: absorb(run, future.result()) for i, future in enumerate(futures)}
    return finish_run(run, parts)


def test_partitions_in_other_processes_write_what_one_process_writes_and_pay_each_text_once(tmp_path, fake_openai, two_files):
    manifest = run_in_worker_processes(openai_config(tmp_path / "cluster", fake_openai, two_files, source__parallel_partitions=2, embedding__batch_size=4), 2)
    stats = manifest["stats"]
    assert max(fake_openai.calls.values()) == 1 and len(fake_openai.calls) == 120  # shared texts: once, though both files ran at once
    assert (stats["rows"], stats["null_texts"], stats["distinct_texts"], stats["chunks"]) == (164, 2, 120, 120)
    # The shared texts: sent by one file, found by the other; each chunk counted once, merged by hash: as sent.
    assert (stats["embedded_chunks"], stats["cache_hits"], stats["in_flight_elsewhere"]) == (120, 0, 0)
    assert stats["requests"] == fake_openai.requests
    alone = run_pipeline(openai_config(tmp_path / "alone", fake_openai, two_files))
    for name in ("part-00000.parquet", "part-00001.parquet"):
        assert pq.read_table(tmp_path / "cluster" / "out" / name).equals(pq.read_table(tmp_path / "alone" / "out" / name))
    assert alone["stats"]["distinct_texts"] == stats["distinct_texts"]


def test_a_worker_that_cannot_see_the_staging_directory_says_what_to_share(tmp_path, fake_openai, two_files):
    run = prepare_run(openai_config(tmp_path, fake_openai, two_files))
    spec = run_spec(run, 2)
    for staging in (tmp_path / "out").glob(".staging-*"):
        staging.rmdir()
    with pytest.raises(EmbedpipeError, match="output.path and cache.path must be on storage every worker shares"):
        embed_partition_in_worker(spec, 0, None)
    close_run(run)  # no longer tracked: later progress snapshots would count its rows


def test_a_worker_on_a_host_without_the_local_input_says_where_to_put_it(tmp_path, fake_openai, two_files):
    run = prepare_run(openai_config(tmp_path, fake_openai, two_files))
    spec = run_spec(run, 2)
    spec.partitions[0].file.unlink()  # as on another host: the flow read it here
    with pytest.raises(EmbedpipeError, match="is not on worker host .*put the input on storage every worker sees"):
        embed_partition_in_worker(spec, 0, None)
    close_run(run)


def test_a_worker_stopped_by_an_empty_quota_embeds_again_once_credit_is_added(tmp_path, fake_openai, two_files):
    run = prepare_run(openai_config(tmp_path, fake_openai, two_files))
    spec = run_spec(run, 1)
    fake_openai.quota_requests = 0
    with pytest.raises(ProviderError, match="quota is used up"):
        embed_partition_in_worker(spec, 0, None)
    fake_openai.quota_requests = None  # credit added; the same worker process is asked again
    assert embed_partition_in_worker(spec, 0, None).rows == 72
    close_run(run)


def test_processes_sharing_a_key_stay_within_its_window_together(tmp_path):
    """Two worker processes, no limits configured: each learns the server's limits and spends
    half of them and of what it reports left, so that together they stay within a window of
    two seconds."""
    for name in ("a", "b"):
        texts = [f"{name} {i} " + "refund printer delay " * 5 for i in range(300)]  # about 20 tokens each
        write_parquet(tmp_path / "in" / f"{name}.parquet", {"id": [f"{name}{i}" for i in range(len(texts))], "text": texts})
    with FakeOpenAI(tpm=120_000, window=2.0, latency=0.02) as server:  # 2,000 tokens a second, 4,000 banked
        manifest = run_in_worker_processes(openai_config(tmp_path, server, tmp_path / "in", source__parallel_partitions=2), 2)
    assert manifest["rows"] == 600 and len(server.calls) == 600
    # Both first requests may be charged before either answer says what is left: a refusal per
    # process as they start, then none.
    assert [at for at, *_ in server.refusals if at > server.first_request_at + 1.0] == []
    assert server.rate_limited <= 2
