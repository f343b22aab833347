"""embedpipe on a Dask cluster of worker hosts on one machine. A benchmark, not a test.

    .venv/bin/python -m benchmarks.cluster                  # 2,000 rows; needs root (network namespaces)
    .venv/bin/python -m benchmarks.cluster --rows 500 --workers 1,2

The hosts are those of the cluster test (`tests/flows/cluster_hosts.py`): a scheduler and each
worker in a network namespace of its own, sharing no local directory, with input, staging and
output in a local S3 (moto's server). The same rows, in 8 files (8 partitions), a tenth of
them texts every file holds, are embedded, each time with fresh caches (every host's own, and
one shared tier, `cache.shared_path`, in the bucket):

- by the local model (torch) on 1, 2 and 4 workers: rows/s over the run's own seconds (input
  checked, every partition embedded, output published);
- through the loopback OpenAI server (latency 50 ms, 300 requests a minute banked over 10 s,
  20 texts a request) on 2 workers, then again with one worker killed (SIGKILL) mid-partition:
  texts the server was paid for twice, its 429 share, and the seconds from the kill until
  another worker's first request for the killed partition's texts.

Every worker runs on the same cores: on a 2-core machine more workers add no speed, only
overhead. The figures show what a cluster costs and that it stays correct.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.fakes.openai_server import FakeOpenAI
from tests.flows.cluster_hosts import Cluster, cluster, namespaces_unavailable

FILES = 8
API_KEY = "sk-bench-cluster"


def put_rows(hosts: Cluster, rows: int) -> None:
    """`rows` short texts in FILES files; one row in ten holds a text that every file holds."""
    rng = random.Random(7)
    words = ["printer", "jammed", "floor", "ticket", "invoice", "refund", "outage", "login", "reset"]
    per_file = rows // FILES
    for file in range(FILES):
        texts = [
            f"shared {i // 10}" if i % 10 == 0 else f"{file}-{i} " + " ".join(rng.choices(words, k=12))
            for i in range(per_file)
        ]
        buffer = io.BytesIO()
        pq.write_table(pa.table({"id": [f"{file}-{i}" for i in range(per_file)], "text": texts}), buffer)
        hosts.fs.pipe_file(f"{hosts.bucket}/in/part{file}.parquet", buffer.getvalue())


def run_once(hosts: Cluster, label: str, embedding: str) -> dict:
    """One run with fresh caches on every host; its manifest."""
    config = (
        f"source:\n  path: s3://{hosts.bucket}/in\n"
        f"embedding:\n{embedding}  task_runner: dask\n  dask_address: {hosts.hosts.scheduler_address}\n"
        f"cache:\n  path: .embedpipe/cache-{label}\n"  # relative: under each host's own directory
        f"  shared_path: s3://{hosts.bucket}/cache-{label}\n"  # one tier for all hosts, fresh each run
        f"output:\n  path: s3://{hosts.bucket}/out-{label}\n"
    )
    run = hosts.run_flow(config, timeout=900, BENCH_KEY=API_KEY)
    if run.returncode != 0:
        sys.exit(f"{label}: the run failed:\n{run.stderr[-3000:]}")
    return json.loads(hosts.fs.cat_file(f"{hosts.bucket}/out-{label}/_manifest.json"))


def local_rows(hosts: Cluster, rows: int, workers: list[int]) -> list[list[str]]:
    """Rows/s of the local model on each number of workers, added to the cluster in turn."""
    table = []
    for count in workers:
        hosts.add_workers(count - len(hosts.live_workers))
        manifest = run_once(hosts, f"local-{count}", "  provider: local\n  backend: torch\n")
        seconds = manifest["stats"]["seconds"]
        table.append([f"local model (torch), {count} worker{'s' * (count > 1)}", f"{rows:,}",
                      f"{seconds:.1f}", f"{rows / seconds:.0f}", "–", "–", "–"])  # fmt: skip
    return table


def api_rows(hosts: Cluster, rows: int) -> list[list[str]]:
    """Through the loopback server on 2 workers: as is, then with one killed mid-partition."""
    table = []
    hosts.add_workers(2 - len(hosts.live_workers))
    for kill in (False, True):
        with FakeOpenAI(host=hosts.host_address, rpm=300, window=10, latency=0.05) as server:
            embedding = (
                "  provider: openai\n  model: text-embedding-3-small\n  dimensions: 16\n"
                f"  base_url: {server.base_url}\n  api_key_env: BENCH_KEY\n  batch_size: 20\n"
            )
            recovery: list[float] = []
            done = threading.Event()
            watcher = threading.Thread(target=kill_and_time_recovery, args=(hosts, server, done, recovery))
            if kill:
                watcher.start()
            try:
                manifest = run_once(hosts, f"api-{'kill' if kill else 'plain'}", embedding)
            finally:
                done.set()
                if kill:
                    watcher.join()
            paid_twice = sum(server.calls.values()) - len(server.calls)
            share = server.rate_limited / max(server.requests, 1)
            label = "openai (loopback), 2 workers" + (", one killed mid-partition" if kill else "")
            table.append([label, f"{rows:,}", f"{manifest['stats']['seconds']:.1f}",
                          f"{rows / manifest['stats']['seconds']:.0f}", str(paid_twice), f"{share:.1%}",
                          f"{recovery[0]:.2f}" if recovery else "–"])  # fmt: skip
    return table


def kill_and_time_recovery(hosts: Cluster, server: FakeOpenAI, done: threading.Event, recovery: list) -> None:
    """Kill the first live worker the server has answered 3 requests of; then time until another
    host's first request for a text of the file (partition) it was embedding."""
    by_address = {hosts.address(name): name for name in hosts.live_workers}
    busy = None
    while busy is None and not done.wait(0.01):
        busy = next((peer for peer in by_address if server.peers[peer] >= 3), None)
    if busy is None:
        return
    hosts.kill_worker(by_address[busy])
    killed_at = time.monotonic()
    mine = [t for _, peer, texts in list(server.answered) if peer == busy for t in texts if not t.startswith("shared")]
    prefix = mine[-1].split("-")[0] + "-"
    while not done.wait(0.01):
        for at, peer, texts in list(server.answered):
            if at > killed_at and peer != busy and any(t.startswith(prefix) for t in texts):
                recovery.append(at - killed_at)
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--workers", default="1,2,4", help="local-model runs on these numbers of workers, rising")
    args = parser.parse_args()
    reason = namespaces_unavailable()
    if reason:
        sys.exit(f"benchmarks.cluster: {reason}")
    with tempfile.TemporaryDirectory() as root, cluster(Path(root)) as hosts:
        put_rows(hosts, args.rows)
        table = api_rows(hosts, args.rows)  # first: it leaves one worker of two alive
        table += local_rows(hosts, args.rows, [int(n) for n in args.workers.split(",")])
    print("| run | rows | seconds | rows/s | texts paid twice | 429 share | recovery s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for line in table:
        print("| " + " | ".join(line) + " |")


if __name__ == "__main__":
    main()
