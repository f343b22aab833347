"""The coordinator on the Dask scheduler, measured on a local cluster of 2 worker processes:

- the round trip of one call from a worker (claims of 1, 100 and 1,000 keys), beside a
  `distributed.Variable.get` (one key a call);
- a 2-worker run against the loopback server: the requests it admitted against the most it
  allows (its bank and its limit), the share of 429s, and the same for one worker once the
  other is done.

    .venv/bin/python -m benchmarks.coordinator       # about 30 s
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import distributed

from pipeline.run.coordinator import CoordinatedClaims, Coordinator, CoordinatorLink
from pipeline.run.steps import finish_run, prepare_run
from pipeline.run.workers import absorb, embed_partition_in_worker, run_spec
from tests.conftest import openai_config, write_parquet
from tests.fakes.openai_server import FakeOpenAI

CALLS = 500
RPM = 1200
BANK = RPM / 60 * 2.0  # the server's 2 s window


def claim_round_trip(keys: int) -> float:
    """Seconds per claim-and-release of `keys` keys, from a task on a worker."""
    claims = CoordinatedClaims(CoordinatorLink.here(), "bench")  # type: ignore[arg-type]
    texts = [f"text {i}" for i in range(keys)]
    started = time.perf_counter()
    for call in range(CALLS):
        claims.claim_many(texts, f"owner {call}", 900.0)
        claims.release_many(texts, f"owner {call}")
    return (time.perf_counter() - started) / (2 * CALLS)


def variable_round_trip() -> float:
    variable = distributed.Variable("bench")
    variable.set(1)
    started = time.perf_counter()
    for _ in range(CALLS):
        variable.get()
    return (time.perf_counter() - started) / CALLS


def two_worker_run(client: distributed.Client, folder: Path, sizes: tuple[int, int]) -> str:
    for name, count in zip("ab", sizes):
        texts = [f"{name} {i}" for i in range(count)]
        write_parquet(folder / "in" / f"{name}.parquet", {"id": [f"{name}{i}" for i in range(count)], "text": texts})
    with FakeOpenAI(rpm=RPM, window=2.0, latency=0.02) as server:
        config = openai_config(folder, server, folder / "in", source__parallel_partitions=2, embedding__batch_size=1)
        run = prepare_run(config)
        spec = run_spec(run, 2, coordinated=True)
        workers = sorted(client.scheduler_info()["workers"])
        futures = [
            client.submit(embed_partition_in_worker, spec, i, None, workers=[w], pure=False)
            for i, w in enumerate(workers)
        ]
        finish_run(run, {i: absorb(run, f.result()) for i, f in enumerate(futures)})
    admitted = server.admitted
    b_done = max(at for at, texts in zip(admitted, server.admitted_inputs) if texts[0].startswith("b "))
    steady = [at for at in admitted if at > admitted[0] + 2.5]  # past the bank and the workers' refill delay
    line = f"{sizes}: {used(admitted)}; from 2.5 s on {used(steady)}; 429s {server.rate_limited} of {server.requests}"
    alone = [at for at in admitted if at > b_done + 2.0]  # b idle: its share moved to a
    return line + (f"; a once alone: {used(alone)}" if len(alone) > 1 else "")


def used(admitted: list[float]) -> str:
    """Requests admitted over a stretch, against the most the server takes in it: its 2 s bank
    and the limit for the stretch's length (a rate alone would count the bank as a breach)."""
    seconds = admitted[-1] - admitted[0]
    most = BANK + RPM / 60 * seconds
    rate = (len(admitted) - 1) / seconds * 60
    return f"{len(admitted)} requests in {seconds:.1f} s, {rate:.0f}/min ({len(admitted) / most:.0%} of {most:.0f})"


def main() -> None:
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    with cluster, distributed.Client(cluster) as client:
        client.register_plugin(Coordinator())
        for keys in (1, 100, 1000):
            seconds = client.submit(claim_round_trip, keys, pure=False).result()
            print(f"claim round trip, {keys:>5} keys: {seconds * 1e6:,.0f} µs")
        seconds = client.submit(variable_round_trip, pure=False).result()
        print(f"Variable.get round trip:        {seconds * 1e6:,.0f} µs")
        for sizes in ((150, 150), (150, 20)):
            with tempfile.TemporaryDirectory() as folder:
                print(two_worker_run(client, Path(folder), sizes))


if __name__ == "__main__":
    main()
