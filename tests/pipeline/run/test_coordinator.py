"""The coordinator on a real Dask scheduler, with two worker processes embedding through the
loopback server: texts both partitions hold are paid once, the rate limit goes to the workers
that draw on it, and a worker that dies gives back its claims and its share."""

import os
import time

import pytest

distributed = pytest.importorskip("distributed")

from pipeline.run.coordinator import CoordinatedClaims, Coordinator, CoordinatorLink  # noqa: E402
from pipeline.run.steps import finish_run, prepare_run  # noqa: E402
from pipeline.run.workers import absorb, budget_pool, close_run_embedders, embed_partition_in_worker, run_spec  # noqa: E402
from tests.conftest import openai_config, write_parquet  # noqa: E402
from tests.fakes.openai_server import FakeOpenAI  # noqa: E402

RPM = 600  # 10 requests a second, 2 s of them banked


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as local:
        with distributed.Client(local) as client:
            client.register_plugin(Coordinator())
            yield client


def workers(client) -> list[str]:
    return sorted(client.scheduler_info()["workers"])


def run_on_two_workers(client, config) -> tuple[dict, str]:
    """Each partition of the run on its own worker, at once; the manifest, and the run's key."""
    run = prepare_run(config)
    spec = run_spec(run, 2, coordinated=True)
    futures = [
        client.submit(embed_partition_in_worker, spec, i, None, workers=[worker], pure=False)
        for i, worker in zip(range(len(run.input.partitions)), workers(client))
    ]
    return finish_run(run, {i: absorb(run, future.result()) for i, future in enumerate(futures)}), spec.run_key


def shares_held(dask_scheduler) -> dict[str, dict[str, float]]:
    """The shares each run's budget is split into, by worker."""
    return {pool: dict(book.told) for pool, book in dask_scheduler.plugins[Coordinator.name].shares.items()}


def close_on_each_worker(client, run_key: str) -> list[int]:
    """What the flow does once a run ends: each worker closes that run's embedders; how many each closed."""
    return client.gather([client.submit(close_run_embedders, run_key, workers=[w], pure=False) for w in workers(client)])


def book(dask_scheduler):
    coordinator = dask_scheduler.plugins[Coordinator.name]
    return {"claims": len(coordinator.claims.holders), "granted": coordinator.claims.granted}


def test_two_workers_pay_each_text_both_partitions_hold_once(tmp_path, cluster):
    shared = [f"said in both files {i}" for i in range(60)]
    for name in ("a", "b"):
        texts = shared + [f"only in {name} {i}" for i in range(20)]
        write_parquet(tmp_path / "in" / f"{name}.parquet", {"id": [f"{name}{i}" for i in range(80)], "text": texts})
    before = cluster.run_on_scheduler(book)
    with FakeOpenAI(latency=0.01) as server:
        config = openai_config(tmp_path, server, tmp_path / "in", source__parallel_partitions=2, embedding__batch_size=4)
        manifest, run_key = run_on_two_workers(cluster, config)
    assert manifest["rows"] == 160 and len(server.calls) == 100
    assert max(server.calls.values()) == 1  # the texts both files hold: paid once, though both ran at once
    after = cluster.run_on_scheduler(book)
    assert after["granted"] - before["granted"] >= 100 and after["claims"] == 0  # claimed there, all let go


def test_a_worker_alone_on_the_budget_gets_the_whole_limit(tmp_path, cluster):
    for name, count in (("a", 80), ("b", 10)):
        write_parquet(tmp_path / "in" / f"{name}.parquet", {"id": [f"{name}{i}" for i in range(count)], "text": [f"{name} {i}" for i in range(count)]})
    before = cluster.run_on_scheduler(shares_held)  # earlier tests' runs, not closed
    with FakeOpenAI(rpm=RPM, window=2.0) as server:
        config = openai_config(tmp_path, server, tmp_path / "in", source__parallel_partitions=2, embedding__batch_size=1)
        manifest, run_key = run_on_two_workers(cluster, config)
    assert manifest["rows"] == 90 and len(server.calls) == 90
    b_done = max(at for at, texts in zip(server.admitted, server.admitted_inputs) if texts[0].startswith("b "))
    alone = [at for at in server.admitted if at > b_done + 2.0]  # b is idle: its share moved to a
    rate = (len(alone) - 1) / (alone[-1] - alone[0]) * 60
    assert rate > 0.75 * RPM, f"{rate:.0f} requests a minute"  # not the half a fixed split would leave it
    assert server.rate_limited <= 0.01 * server.requests
    assert cluster.run_on_scheduler(shares_held).keys() - before.keys()  # this run's shares, held by its workers
    assert close_on_each_worker(cluster, run_key) == [1, 1]  # the run ended
    assert cluster.run_on_scheduler(shares_held).keys() == before.keys()  # its shares given back, its book gone


def claim_and_share(keys):
    link = CoordinatorLink.here()
    held = CoordinatedClaims(link, "ns").claim_many(keys, "dying", 900.0)
    return held, link.call("share", pool="p", worker=link.address, wanted=True)


def share_here():
    link = CoordinatorLink.here()
    return link.call("share", pool="p", worker=link.address, wanted=True)


def test_a_worker_that_dies_gives_back_its_claims_and_its_share(cluster):
    survivor, doomed = workers(cluster)
    assert cluster.submit(share_here, workers=[survivor], pure=False).result() == 1.0
    held, share = cluster.submit(claim_and_share, ["t1", "t2"], workers=[doomed], pure=False).result()
    assert held == ["t1", "t2"] and share == 0.01  # the survivor still holds the whole limit
    assert cluster.submit(share_here, workers=[survivor], pure=False).result() == 0.5  # it gives half up
    cluster.run(os._exit, 1, workers=[doomed], on_error="ignore")
    while doomed in cluster.scheduler_info()["workers"]:  # until the scheduler notices
        time.sleep(0.05)
    assert cluster.run_on_scheduler(book)["claims"] == 0
    assert cluster.submit(share_here, workers=[survivor], pure=False).result() == 1.0


def two_runs_ask(pool):
    """Two runs' members in this worker process ask in turn for shares of one budget."""
    link = CoordinatorLink.here()
    ask = [lambda run=run: link.call("share", pool=pool, worker=f"{link.address}#{run}", wanted=True) for run in "ab"]
    shares = [ask[0](), ask[1](), ask[0](), ask[1]()]
    for run in "ab":
        link.call("leave", pool=pool, worker=f"{link.address}#{run}")
    return shares


def test_two_runs_on_one_key_draw_from_one_budget(tmp_path, cluster):
    with FakeOpenAI() as server:
        config = openai_config(tmp_path, server, tmp_path / "in")
        other_run = openai_config(tmp_path, server, tmp_path / "in", embedding__batch_size=7)
    pool = budget_pool(config.embedding, "sk-one")
    assert pool == budget_pool(other_run.embedding, "sk-one") != budget_pool(config.embedding, "sk-two")
    assert "sk-one" not in pool
    # the second run gets its half only once the first was told to give it up: never 200% between them
    assert cluster.submit(two_runs_ask, pool, workers=[workers(cluster)[0]], pure=False).result() == [1.0, 0.01, 0.5, 0.5]
