"""How close does each client get to the account's rate limits? A benchmark, not a test.

    .venv/bin/python -m benchmarks.ratelimits            # both scenarios, about 25 minutes
    .venv/bin/python -m benchmarks.ratelimits --quick    # a 1-minute smoke run
    .venv/bin/python -m benchmarks.ratelimits --scenarios tokens-bound --clients embedpipe,langchain --runs 3

The loopback server enforces RPM and TPM as the API does (a per-minute budget, banked up to
one minute and refilled continuously, 429 with retry-after and x-ratelimit headers) and runs
in its own process. Every client embeds the same texts against a fresh server whose budget
starts full, as an idle key's does. That banked minute lets any client finish one minute's
budget early, so the lower bound on time is (work - one minute's budget) / limit, and the
sustained rate is (work - one minute's budget) / time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.peers import cookbook_embed, langchain_embed
import pipeline.providers.openai  # noqa: F401  imported before timing, as the peers' clients are
from pipeline.config import Config
from pipeline.run import run_pipeline
from pipeline.tokens import cl100k_base


@dataclass(frozen=True)
class Scenario:
    name: str
    rpm: int
    tpm: int
    latency: float
    texts: int
    words: tuple[int, int]  # words per text, min and max
    batch: int  # texts per request, the same for every client
    binding: str  # "tokens" or "requests"


SCENARIOS = [
    Scenario("tokens-bound", rpm=10_000, tpm=100_000, latency=0.3, texts=10_000, words=(20, 60), batch=256, binding="tokens"),
    Scenario("requests-bound", rpm=300, tpm=10_000_000, latency=0.25, texts=1_200 * 64, words=(2, 6), batch=64, binding="requests"),
]
WORDS = "invoice refund printer login password shipping delay broken screen battery order account email update".split()


def corpus(scenario: Scenario) -> list[str]:
    rng = random.Random(7)
    return [f"#{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(*scenario.words))) for i in range(scenario.texts)]


def serve(conn, scenario: Scenario) -> None:
    from tests.fakes.openai_server import FakeOpenAI

    with FakeOpenAI(rpm=scenario.rpm, tpm=scenario.tpm, latency=scenario.latency) as server:
        conn.send(server.base_url)
        conn.recv()
        conn.send({"refusals": server.refusals, "idle_seconds": server.budgets[scenario.binding].idle_seconds, "first_request_at": server.first_request_at, "requests": server.requests, "rate_limited": server.rate_limited, "tokens": server.tokens_served})


def embedpipe_setup(base_url: str, texts: list[str], scenario: Scenario, tmp: str):
    """Write the texts as the Parquet input a user would have; return the timed part."""
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), Path(tmp) / "in.parquet")
    config = Config.model_validate({
        "source": {"path": f"{tmp}/in.parquet"},
        "embedding": {"provider": "openai", "model": "text-embedding-3-small", "dimensions": 16, "base_url": base_url, "requests_per_minute": scenario.rpm, "tokens_per_minute": scenario.tpm, "batch_size": scenario.batch, "max_concurrency": 16,
                      "api_key_env": "EMBEDPIPE_BENCH_KEY"},  # named, as for any server not OpenAI's; the key is passed below
        "cache": {"path": f"{tmp}/cache"},
        "output": {"path": f"{tmp}/out"},
    })
    return lambda: run_pipeline(config, api_key="sk-bench")


# client -> setup(base_url, texts, scenario, tmp dir) returning the call that is timed
CLIENTS = {
    "embedpipe": embedpipe_setup,
    "langchain": lambda url, texts, s, tmp: lambda: langchain_embed(url, texts, s.batch),
    "cookbook": lambda url, texts, s, tmp: lambda: cookbook_embed(url, texts, s.batch, s.rpm, s.tpm),
}


def warm_imports() -> None:
    """Import what any client imports on first use, so whichever runs first pays no import:
    httpx loads its transport (httpcore, 0.2 s) when the first client is made."""
    import httpx
    import langchain_openai  # noqa: F401
    import openai

    openai.OpenAI(api_key="sk-warm", base_url="http://127.0.0.1:9/v1").close()
    httpx.Client().close()


def measure(client: str, scenario: Scenario, texts: list[str]) -> dict:
    warm_imports()
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve, args=(child, scenario), daemon=True)
    server.start()
    base_url = parent.recv()
    with tempfile.TemporaryDirectory() as tmp:
        call = CLIENTS[client](base_url, texts, scenario, tmp)
        started, error = time.monotonic(), None
        try:
            call()
        except Exception as exc:  # a peer that gives up is a result, not a crash
            error = f"{type(exc).__name__}: {str(exc)[:80]}"
        seconds = time.monotonic() - started
    parent.send("stop")
    counts = parent.recv()
    server.join()
    # CLOCK_MONOTONIC is shared by processes, so the server's stamp compares with ours
    start_up = (counts.pop("first_request_at") or started) - started
    if os.environ.get("EMBEDPIPE_BENCH_DEBUG"):
        print(client, [(round(t - started, 2), name, round(level), need) for t, name, level, need in counts["refusals"]][:40])
    counts.pop("refusals")
    return {"client": client, "seconds": seconds, "start_up": start_up, "error": error, **counts}


def report(scenario: Scenario, tokens: int, results: list[dict]) -> None:
    limit = scenario.tpm if scenario.binding == "tokens" else scenario.rpm
    work = tokens if scenario.binding == "tokens" else -(-scenario.texts // scenario.batch)
    lower_bound = (work - limit) / limit * 60
    print(f"\n{scenario.name}: {scenario.rpm:,} RPM, {scenario.tpm:,} TPM, {scenario.latency} s latency; "
          f"{scenario.texts:,} texts, {tokens:,} tokens, {scenario.batch} texts a request; lower bound {lower_bound:.2f} s (+ {scenario.latency} s latency)")
    print(f"{'client':<10} {'seconds':>8} {'sustained ' + scenario.binding[:-1] + 's/min ÷ limit':>30} {'429s ÷ requests':>16} {'time ÷ lower bound':>19} {'first request s':>16} {'budget idle s':>14}")
    for r in results:
        sustained = (work - limit) / r["seconds"] * 60 / limit
        rate_429 = r["rate_limited"] / max(r["requests"], 1)
        note = f"  FAILED {r['error']}" if r["error"] else ""
        if len(r["all_seconds"]) > 1:
            note += "  runs: " + ", ".join(f"{seconds:.2f}" for seconds in r["all_seconds"])
        print(f"{r['client']:<10} {r['seconds']:>8.2f} {sustained:>30.3f} {rate_429:>16.4f} {r['seconds'] / lower_bound:>19.3f} {r['start_up']:>16.2f} {r['idle_seconds']:>14.2f}{note}")
    ours = next((r for r in results if r["client"] == "embedpipe" and not r["error"]), None)
    if ours is not None:
        print(targets(ours, [r for r in results if r is not ours], (work - limit) / ours["seconds"] * 60 / limit))


def targets(ours: dict, peers: list[dict], sustained: float) -> str:
    """The issue's three targets for embedpipe's (median) run: each met or not, with its figure."""
    rate_429 = ours["rate_limited"] / max(ours["requests"], 1)
    checks = [(f"sustained ≥ 0.95 of the limit ({sustained:.3f})", sustained >= 0.95), (f"429s < 1% of requests ({rate_429:.2%})", rate_429 < 0.01)]
    for peer in peers:
        lead = peer["seconds"] - ours["seconds"]
        checks.append((f"ahead of {peer['client']} ({'it failed' if peer['error'] else f'{lead:+.2f} s'})", bool(peer["error"]) or lead > 0))
    return "targets: " + "; ".join(f"{what}: {'met' if ok else 'NOT met'}" for what, ok in checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a scaled-down smoke run")
    parser.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated subset of " + ", ".join(CLIENTS))
    parser.add_argument("--scenarios", default=",".join(s.name for s in SCENARIOS), help="comma-separated subset of " + ", ".join(s.name for s in SCENARIOS))
    parser.add_argument("--runs", type=int, default=1, help="rounds of every client, taken in turn; each client's median run is shown")
    args = parser.parse_args()
    for scenario in SCENARIOS:
        if scenario.name not in args.scenarios.split(","):
            continue
        if args.quick:
            scenario = Scenario(**{**scenario.__dict__, "texts": scenario.texts // 5, "rpm": scenario.rpm // 2, "tpm": scenario.tpm // 2})
        texts = corpus(scenario)
        tokens = sum(len(t) for t in cl100k_base().encode_ordinary_batch(texts))
        clients = args.clients.split(",")
        rounds = [[measure(client, scenario, texts) for client in clients] for _ in range(max(1, args.runs))]
        report(scenario, tokens, [median_run([runs[i] for runs in rounds]) for i in range(len(clients))])


def median_run(runs: list[dict]) -> dict:
    """The run of median time (the faster middle one of an even count), with every run's time."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    return {**ordered[(len(ordered) - 1) // 2], "all_seconds": [r["seconds"] for r in runs]}


if __name__ == "__main__":
    main()
