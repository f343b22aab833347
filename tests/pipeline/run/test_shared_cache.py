"""Runs on hosts with their own local caches and one shared tier (`cache.shared_path`): a text paid
for on one host is not paid for again on another, in one process or in a cluster's workers."""

import pickle

import pyarrow.parquet as pq
import pytest

from pipeline.cache.shared_tier import SharedTier
from pipeline.errors import CacheError
from pipeline.providers import get_embedder
from pipeline.run.estimate import estimate_config
from pipeline.run.report import summary_lines
from pipeline.run.steps import finish_run, prepare_run, run_pipeline
from pipeline.run.workers import absorb, embed_partition_in_worker, run_spec
from tests.conftest import openai_config, write_parquet

TEXTS = [f"ticket {i}: the printer on floor {i % 7} is jammed again" for i in range(60)] + [None, "ticket 0: the printer on floor 0 is jammed again"]


@pytest.fixture
def source(tmp_path):
    return write_parquet(tmp_path / "in" / "docs.parquet", {"id": list(range(len(TEXTS))), "text": TEXTS})


@pytest.fixture(params=["directory", "s3"])
def tier_url(request, tmp_path):
    if request.param == "directory":
        return str(tmp_path / "shared")
    _, bucket = request.getfixturevalue("s3")
    return f"s3://{bucket}/vectors"


def on_host(tmp_path, server, source, name: str, shared_path: str | None, **overrides):
    """A run as host `name` makes it: its own local cache and output, the shared tier as given."""
    return openai_config(tmp_path / name, server, source, cache__shared_path=shared_path, source__partition_rows=25, **overrides)


def test_a_second_host_with_its_own_local_cache_sends_nothing_and_writes_the_same_vectors(tmp_path, fake_openai, source, tier_url):
    first = run_pipeline(on_host(tmp_path, fake_openai, source, "a", tier_url))
    sent = fake_openai.requests
    second = run_pipeline(on_host(tmp_path, fake_openai, source, "b", tier_url))
    assert sent > 0 and fake_openai.requests == sent  # host b paid for nothing
    assert (first["stats"]["shared_writes"], first["stats"]["shared_hits"]) == (60, 0)
    assert (second["stats"]["shared_hits"], second["stats"]["cache_hits"], second["stats"]["shared_writes"]) == (60, 60, 0)
    for name in [f["name"] for f in first["files"]]:
        assert pq.read_table(tmp_path / "a" / "out" / name).equals(pq.read_table(tmp_path / "b" / "out" / name))
    assert any("shared cache" in line and "60 chunks" in line for line in summary_lines(second))
    estimate = estimate_config(on_host(tmp_path, fake_openai, source, "c", tier_url), None)
    assert (estimate.cache_hits, estimate.chunks_to_send) == (60, 0)  # a third host's estimate counts the tier


def test_without_a_shared_path_a_second_host_pays_again_and_the_summary_says_nothing_of_it(tmp_path, fake_openai, source):
    first = run_pipeline(on_host(tmp_path, fake_openai, source, "a", None))
    sent = fake_openai.requests
    run_pipeline(on_host(tmp_path, fake_openai, source, "b", None))
    assert fake_openai.requests == 2 * sent
    assert "shared_hits" not in first["stats"] and not any(line.strip().startswith("shared cache") for line in summary_lines(first))


def test_a_damaged_object_in_the_tier_is_embedded_again_counted_and_replaced(tmp_path, fake_openai, source):
    shared = str(tmp_path / "shared")
    config = on_host(tmp_path, fake_openai, source, "a", shared)
    run_pipeline(config)
    embedder = get_embedder(config.embedding, "key")
    tier = SharedTier(shared, embedder.cache_namespace, embedder.dimensions)
    damaged = tier.paths([TEXTS[5]])[0]
    good = tier.get_many([TEXTS[5]])[TEXTS[5]]
    tier.put_many({TEXTS[5]: good[:-4]})  # a vector one float short
    fake_openai.calls.clear()
    stats = run_pipeline(on_host(tmp_path, fake_openai, source, "b", shared))["stats"]
    assert dict(fake_openai.calls) == {TEXTS[5]: 1}  # that text alone paid for again
    assert (stats["bad_cache_entries"], stats["embedded_chunks"], stats["shared_hits"], stats["shared_writes"]) == (1, 1, 59, 1)
    assert tier.get_many([TEXTS[5]])[TEXTS[5]] == good and damaged.endswith(tier.paths([TEXTS[5]])[0])


def test_an_unreachable_tier_stops_the_run_before_any_request(tmp_path, fake_openai, source, s3):
    url = "s3://no-such-bucket-embedpipe/vectors"
    with pytest.raises(CacheError) as error:
        run_pipeline(on_host(tmp_path, fake_openai, source, "a", url))
    assert str(error.value).startswith(f"cache.shared_path {url}: ") and "\n" not in str(error.value)
    assert fake_openai.requests == 0


def test_cluster_workers_open_the_shared_tier_from_the_run_spec(tmp_path, fake_openai, source):
    shared = str(tmp_path / "shared")
    run_pipeline(on_host(tmp_path, fake_openai, source, "a", shared))
    sent = fake_openai.requests
    run = prepare_run(on_host(tmp_path, fake_openai, source, "worker-host", shared))
    spec = pickle.loads(pickle.dumps(run_spec(run, 2)))  # as it travels to a worker
    parts = {i: absorb(run, embed_partition_in_worker(spec, i, None)) for i in range(len(run.input.partitions))}
    stats = finish_run(run, parts)["stats"]
    assert fake_openai.requests == sent and (stats["shared_hits"], stats["embedded_chunks"]) == (60, 0)
