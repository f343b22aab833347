"""How close does each client get to the account's rate limits? A benchmark, not a test.

    .venv/bin/python -m benchmarks.ratelimits            # every scenario and client, about 30 minutes
    .venv/bin/python -m benchmarks.ratelimits --quick    # scaled down, a few minutes in all
    .venv/bin/python -m benchmarks.ratelimits --scenarios window-1s,halved --clients embedpipe,openai-loop --runs 3
    .venv/bin/python -m benchmarks.ratelimits --markdown # also one markdown table of every row, for the README
    .venv/bin/python -m benchmarks.ratelimits --limit-headers remaining  # headers that say only what is left (Azure)

The loopback server runs in its own process and enforces RPM and TPM as servers do: each limit
banks `window` seconds of budget (a token bucket of limit × window / 60, refilled continuously;
the API banks a minute, Azure OpenAI evaluates 1 or 10 s), answers 429 with retry-after-ms, and
sends x-ratelimit-* headers. In `halved` both limits (enforcement and headers) halve a third of
the way into the run and come back at two thirds; in `halved-early` (a 1 s bank) they halve half a
second in and come back a third of the way. Every client embeds the same texts against a
fresh server whose budget starts full, as an idle key's does. Latency is 150 ms plus 20 ms per
1,000 tokens of the request.

The lower bound on time spends the banked budget at once and then every unit of budget as it is
refilled: the smallest T with capacity + ∫₀ᵀ limit(t)/60 dt ≥ work. The sustained rate is the
work beyond the banked budget over the budget refilled during the client's time; 1.0 is the limit.
The server admits a request above the window's whole capacity once the budget is full, leaving it
in debt; a client whose last request does that ends the run with that debt unpaid, so it can beat
the bound (and pass 1.0) by up to (its request - capacity) / rate.
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import pipeline.providers.openai  # noqa: F401  imported before timing, as the peers' clients are
from benchmarks.peers import cookbook_embed, langchain_embed, openai_loop_embed
from pipeline.config import Config
from pipeline.run.steps import run_pipeline
from pipeline.text.tokens import cl100k_base

LATENCY, LATENCY_PER_1K = 0.15, 0.02  # seconds a request, and more per 1,000 of its tokens
PLAIN_BATCH = 256  # texts a request where the scenario fixes none: the plain loop's and the cookbook's
FORK = multiprocessing.get_context("fork")  # the client's process inherits its setup: closures are not pickled


@dataclass(frozen=True)
class Scenario:
    name: str
    binding: str  # "tokens" or "requests": the limit the work runs into
    rpm: int
    tpm: int
    window: float  # seconds of budget the server banks
    seconds: float  # the lower bound on time: the work is sized to it
    words: tuple[int, int]  # words per text, min and max
    batch: int | None = None  # texts per request for every client; None: each client's own choice
    halved: tuple[float, float] | None = None  # fractions of `seconds` at which the limits halve and come back
    window_kind: str = "bucket"  # or "fixed": counters reset every `window` seconds
    trip: float = 0.0  # seconds each request takes to reach the server's limiter (a far region's one-way trip)
    limit_headers: str = "all"  # or "remaining": only x-ratelimit-remaining-* (Azure OpenAI's), no limit or reset

    @property
    def limit(self) -> int:
        """The binding limit, per minute."""
        return self.tpm if self.binding == "tokens" else self.rpm

    @property
    def capacity(self) -> float:
        """The binding budget banked at the start."""
        return self.limit * self.window / 60

    def schedule(self) -> list[tuple[float, float]]:
        """(from second, share of the limit) from the first request on; the first holds since -inf."""
        if not self.halved:
            return [(-math.inf, 1.0)]
        halve, restore = self.halved
        return [(-math.inf, 1.0), (halve * self.seconds, 0.5), (restore * self.seconds, 1.0)]


SCENARIOS = [
    Scenario("minute-tokens", "tokens", rpm=10_000, tpm=1_000_000, window=60, seconds=45, words=(20, 60)),
    Scenario("minute-requests", "requests", rpm=300, tpm=10_000_000, window=60, seconds=45, words=(2, 6), batch=64),
    Scenario("window-1s", "tokens", rpm=10_000, tpm=1_000_000, window=1, seconds=45, words=(20, 60)),
    Scenario("window-10s", "tokens", rpm=10_000, tpm=1_000_000, window=10, seconds=45, words=(20, 60)),
    Scenario("window-1s-requests", "requests", rpm=300, tpm=10_000_000, window=1, seconds=45, words=(2, 6), batch=64),
    Scenario(
        "halved", "tokens", rpm=10_000, tpm=1_000_000, window=10, seconds=45, words=(20, 60), halved=(1 / 3, 2 / 3)
    ),
    Scenario(
        "halved-far",
        "tokens",
        rpm=10_000,
        tpm=1_000_000,
        window=10,
        seconds=45,
        words=(20, 60),
        halved=(1 / 3, 2 / 3),
        trip=0.15,
    ),
    # Halved half a second in, before a server of fixed windows has shown them (found since at their period, not 3 s)
    Scenario(
        "halved-early",
        "tokens",
        rpm=10_000,
        tpm=1_000_000,
        window=1,
        seconds=45,
        words=(20, 60),
        halved=(0.5 / 45, 1 / 3),
    ),
]
WORDS = "invoice refund printer login password shipping delay broken screen battery order account email update".split()


def budget_between(scenario: Scenario, start: float, end: float) -> float:
    """The binding budget refilled from `start` to `end`, seconds from the server's first request."""
    stages = scenario.schedule()
    bounds = [since for since, _ in stages[1:]] + [math.inf]
    total = 0.0
    for (since, share), until in zip(stages, bounds):
        total += max(0.0, min(end, until) - max(start, since)) * share * scenario.limit / 60
    return total


def lower_bound(scenario: Scenario, work: float) -> float:
    """The least seconds for `work`: the banked budget at once, then the budget as it refills."""
    need = work - scenario.capacity
    stages = scenario.schedule()
    bounds = [since for since, _ in stages[1:]] + [math.inf]
    for (since, share), until in zip(stages, bounds):
        since, rate = max(since, 0.0), share * scenario.limit / 60
        if until <= since:
            continue
        if need <= rate * (until - since):
            return since + max(need, 0.0) / rate
        need -= rate * (until - since)
    raise AssertionError("the last stage lasts for ever")


def lower_bound_fixed(scenario: Scenario, work: float, phase: float) -> float:
    """The least seconds for `work` against fixed windows, the first request `phase` seconds into
    its window: that window's budget at once, then a window's at each reset (at the limit then)."""
    stages = scenario.schedule()
    need, done_at, reset = work - scenario.capacity, 0.0, scenario.window - phase
    while need > 0:
        share = [share for since, share in stages if since <= reset][-1]
        need, done_at, reset = need - scenario.capacity * share, reset, reset + scenario.window
    return done_at


def sustained(scenario: Scenario, work: float, seconds: float, start_up: float) -> float:
    """The work beyond the banked budget over the budget refilled in the client's `seconds`."""
    return (work - scenario.capacity) / budget_between(scenario, -start_up, seconds - start_up)


def work_for(scenario: Scenario) -> float:
    """The binding units (tokens or requests) whose lower bound is `scenario.seconds`."""
    return scenario.capacity + budget_between(scenario, 0.0, scenario.seconds)


def corpus(scenario: Scenario) -> list[str]:
    """Texts just enough for `work_for(scenario)`: tokens counted with cl100k, or whole requests of `batch`."""
    rng, texts, counts = random.Random(7), [], []
    target = work_for(scenario)
    while (sum(counts) if scenario.binding == "tokens" else len(texts) / scenario.batch) < target:
        new = [
            f"#{len(texts) + i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(*scenario.words)))
            for i in range(scenario.batch or 500)
        ]
        texts += new
        counts += [len(t) for t in cl100k_base().encode_ordinary_batch(new)]
    if scenario.binding == "tokens":  # cut at the text that reaches the target
        total = 0
        for end, count in enumerate(counts, 1):
            total += count
            if total >= target:
                return texts[:end]
    return texts


def work_of(scenario: Scenario, texts: list[str], tokens: int) -> int:
    """The binding units the texts take: their tokens, or the requests of `batch` texts."""
    return tokens if scenario.binding == "tokens" else -(-len(texts) // scenario.batch)


def serve(conn, scenario: Scenario) -> None:
    """The server's process: start, send the URL, change the limits on schedule, send the counts on request."""
    from tests.fakes.openai_server import FakeOpenAI

    with FakeOpenAI(
        rpm=scenario.rpm,
        tpm=scenario.tpm,
        latency=LATENCY,
        latency_per_1k_tokens=LATENCY_PER_1K,
        window=scenario.window,
        window_kind=scenario.window_kind,
        trip=scenario.trip,
        limit_headers=scenario.limit_headers,
    ) as server:
        threading.Thread(target=follow_schedule, args=(server, scenario), daemon=True).start()
        conn.send(server.base_url)
        conn.recv()
        conn.send(
            {
                "refusals": server.refusals,
                "idle_seconds": server.budgets[scenario.binding].idle_seconds,
                "first_request_at": server.first_request_at,
                "requests": server.requests,
                "window_origin": server.budgets[scenario.binding].origin,
                "rate_limited": server.rate_limited,
                "tokens": server.tokens_served,
            }
        )


def follow_schedule(server, scenario: Scenario) -> None:
    """Set the server's limits at each stage of the schedule, timed from its first request."""
    stages = scenario.schedule()[1:]
    if not stages:
        return
    while server.first_request_at is None:
        time.sleep(0.005)
    for since, share in stages:
        time.sleep(max(0.0, server.first_request_at + since - time.monotonic()))
        server.set_limits(rpm=scenario.rpm * share, tpm=scenario.tpm * share)


def embedpipe_setup(base_url: str, texts: list[str], scenario: Scenario, tmp: str):
    """Write the texts as the Parquet input a user would have; return the timed call and the row count."""
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), Path(tmp) / "in.parquet")
    config = embedpipe_config(base_url, scenario, tmp)
    return lambda: run_pipeline(config, api_key="sk-bench"), lambda _: vectors_written(Path(tmp) / "out")


def embedpipe_config(base_url: str, scenario: Scenario, tmp: str) -> Config:
    """No limits, concurrency or (unless the scenario fixes one) request size: embedpipe learns the
    limits from the server's headers and sizes its requests itself. A server whose headers say only
    what is left gets the limits in the config, as embedpipe's warning asks a user to."""
    embedding = {
        "provider": "openai",
        "model": "text-embedding-3-small",
        "dimensions": 16,
        "base_url": base_url,
        "api_key_env": "EMBEDPIPE_BENCH_KEY",
    }  # named, as for any server not OpenAI's; the key is passed to the run
    if scenario.batch:
        embedding["batch_size"] = scenario.batch
    if scenario.limit_headers != "all":
        embedding.update(requests_per_minute=scenario.rpm, tokens_per_minute=scenario.tpm)
    return Config.model_validate(
        {
            "source": {"path": f"{tmp}/in.parquet"},
            "embedding": embedding,
            "cache": {"path": f"{tmp}/cache"},
            "output": {"path": f"{tmp}/out"},
        }
    )


def vectors_written(out: Path) -> int:
    """Rows of embedpipe's output that hold a vector."""
    files = sorted(out.glob("*.parquet"))
    return sum(pq.read_table(f, columns=["embedding"]).column("embedding").drop_null().length() for f in files)


def peer(embed):
    """A peer's setup: `embed(url, texts, scenario)` returns its vectors, None where it has none."""

    def setup(base_url: str, texts: list[str], scenario: Scenario, tmp: str):
        return lambda: embed(base_url, texts, scenario), lambda vectors: sum(v is not None for v in vectors)

    return setup


# client -> setup(base_url, texts, scenario, tmp dir) returning (the timed call, its result -> rows with a vector)
CLIENTS = {
    "embedpipe": embedpipe_setup,
    "langchain": peer(lambda url, texts, s: langchain_embed(url, texts, s.batch)),
    "cookbook": peer(lambda url, texts, s: cookbook_embed(url, texts, s.batch or PLAIN_BATCH, s.rpm, s.tpm)),
    "openai-loop": peer(lambda url, texts, s: openai_loop_embed(url, texts, s.batch or PLAIN_BATCH)),
}


def warm_imports() -> None:
    """Import what any client imports on first use, so whichever runs first pays no import:
    httpx loads its transport (httpcore, 0.2 s) when the first client is made."""
    import httpx
    import langchain_openai  # noqa: F401
    import openai

    openai.OpenAI(api_key="sk-warm", base_url="http://127.0.0.1:9/v1").close()
    httpx.Client().close()


def measure(client: str, scenario: Scenario, texts: list[str], give_up: float | None = None) -> dict:
    """One client's run against a fresh server: time, the server's counts, rows lost. A client still
    running after `give_up` seconds is stopped and has failed."""
    warm_imports()
    parent, child = FORK.Pipe()
    server = FORK.Process(target=serve, args=(child, scenario), daemon=True)
    server.start()
    base_url = parent.recv()
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = FORK.Pipe()
        # not a daemon: embedpipe may start processes of its own
        runner = FORK.Process(target=run_client, args=(theirs, client, base_url, texts, scenario, tmp))
        runner.start()
        theirs.close()  # so that a client process that dies is an EOF here
        outcome = client_outcome(ours, runner, give_up)
    parent.send("stop")
    counts = parent.recv()
    server.join()
    started = outcome["started"] or counts["first_request_at"] or 0.0
    # CLOCK_MONOTONIC is shared by processes, so the server's stamp compares with the client's
    first_request_at = counts.pop("first_request_at") or started
    start_up = first_request_at - started
    phase = (first_request_at - counts.pop("window_origin")) % scenario.window  # where fixed windows' resets fall
    if os.environ.get("EMBEDPIPE_BENCH_DEBUG"):
        refusals = [(round(t - started, 2), name, round(level), need) for t, name, level, need in counts["refusals"]]
        print(client, refusals[:40])
    counts.pop("refusals")
    return {
        "client": client,
        "seconds": outcome["seconds"],
        "start_up": start_up,
        "phase": phase,
        "error": outcome["error"],
        "rows_lost": len(texts) - outcome["got"],
        **counts,
    }


def client_outcome(conn, runner, give_up: float | None) -> dict:
    """What the client's process sent; a failure if it died, or was still running after `give_up` s."""
    failed = {"started": None, "seconds": give_up or 0.0, "got": 0}
    try:
        if conn.poll(give_up):
            return conn.recv()
        runner.kill()
        return {**failed, "error": f"given up after {give_up:.0f} s"}
    except EOFError:
        return {**failed, "error": f"the client's process exited with {runner.exitcode}"}
    finally:
        runner.join()


def run_client(conn, client: str, base_url: str, texts: list[str], scenario: Scenario, tmp: str) -> None:
    """The client's process: set up, time the call, count the rows it returned a vector for."""
    call, count = CLIENTS[client](base_url, texts, scenario, tmp)
    started, error, got = time.monotonic(), None, 0
    if os.environ.get("EMBEDPIPE_BENCH_DEBUG"):  # what embedpipe learned, and when (seconds from the start)
        handler = logging.StreamHandler()
        handler.setFormatter(_SinceStart(started))
        logging.getLogger("embedpipe").addHandler(handler)
        logging.getLogger("embedpipe").setLevel(logging.INFO)
    try:
        result = call()
    except Exception as exc:  # a peer that gives up is a result, not a crash
        error = f"{type(exc).__name__}: {str(exc)[:80]}"
    seconds = time.monotonic() - started
    if error is None:  # a client that raised returned nothing: every row is lost
        got = count(result)
    conn.send({"started": started, "seconds": seconds, "error": error, "got": got})


class _SinceStart(logging.Formatter):
    def __init__(self, started: float):
        super().__init__()
        self.started = started

    def format(self, record: logging.LogRecord) -> str:
        return f"{time.monotonic() - self.started:7.2f} s  {record.getMessage()}"


def describe(scenario: Scenario, texts: int, tokens: int, work: int) -> str:
    """The scenario in one line: limits, window, schedule, work and its lower bound."""
    window = f"{scenario.window:g} s window" + (" (fixed)" if scenario.window_kind == "fixed" else "")
    behaviour = ""
    if scenario.halved:
        halve, restore = (f * scenario.seconds for f in scenario.halved)
        behaviour = f", halved from {halve:.0f} s to {restore:.0f} s"
    if scenario.trip:
        behaviour += f", requests reach it {scenario.trip * 1000:.0f} ms after they leave"
    if scenario.limit_headers != "all":
        behaviour += f", headers: {scenario.limit_headers} only"
    size = f"{scenario.batch} texts a request" if scenario.batch else "request size the client's"
    bound = f"lower bound {lower_bound(scenario, work):.2f} s (+ latency)"
    if scenario.window_kind == "fixed":  # where the resets fall differs run to run
        bound = "lower bound each run's: the first window, then one at each reset (+ latency)"
    return (
        f"{scenario.name}: {scenario.rpm:,} RPM, {scenario.tpm:,} TPM, {window}{behaviour}; {texts:,} texts, "
        f"{tokens:,} tokens, {size}; {bound}"
    )


def figures(scenario: Scenario, work: int, r: dict) -> dict:
    """One run's figures as the report shows them. With fixed windows the lower bound is the run's
    own (where its first request fell in a window), and sustained is that bound over its time."""
    rate_429 = r["rate_limited"] / max(r["requests"], 1)
    if scenario.window_kind == "fixed":
        bound = lower_bound_fixed(scenario, work, r["phase"])
        return {
            "sustained": bound / max(r["seconds"] - r["start_up"], 1e-9),
            "rate_429": rate_429,
            "vs_bound": r["seconds"] / bound,
        }
    return {
        "sustained": sustained(scenario, work, r["seconds"], r["start_up"]),
        "rate_429": rate_429,
        "vs_bound": r["seconds"] / lower_bound(scenario, work),
    }


def report(scenario: Scenario, texts: list[str], tokens: int, results: list[dict]) -> None:
    """Print the scenario's table and the verdict line for embedpipe."""
    work = work_of(scenario, texts, tokens)
    print("\n" + describe(scenario, len(texts), tokens, work))
    print(
        f"{'client':<12} {'seconds':>8} {'sustained ÷ limit':>18} {'429s ÷ requests':>16} {'rows lost':>10} "
        f"{'time ÷ lower bound':>19} {'first request s':>16} {'budget idle s':>14}"
    )
    for r in results:
        f = figures(scenario, work, r)
        note = f"  FAILED {r['error']}" if r["error"] else ""
        if len(r["all_seconds"]) > 1:
            note += "  runs: " + ", ".join(f"{seconds:.2f}" for seconds in r["all_seconds"])
        print(
            f"{r['client']:<12} {r['seconds']:>8.2f} {f['sustained']:>18.3f} {f['rate_429']:>16.4f} "
            f"{r['rows_lost']:>10,} {f['vs_bound']:>19.3f} {r['start_up']:>16.2f} {r['idle_seconds']:>14.2f}{note}"
        )
    ours = next((r for r in results if r["client"] == "embedpipe"), None)
    if ours is not None:
        print(targets(ours, [r for r in results if r is not ours], figures(scenario, work, ours)["sustained"]))


def beaten(peer: dict) -> bool:
    """A peer that raised or lost rows has failed: embedpipe is ahead of it whatever the time."""
    return bool(peer["error"]) or peer.get("rows_lost", 0) > 0


def targets(ours: dict, peers: list[dict], sustained: float) -> str:
    """The issue's targets for embedpipe's (median) run: each met or not, with its figure."""
    rate_429 = ours["rate_limited"] / max(ours["requests"], 1)
    lost = ours.get("rows_lost", 0)
    checks = [
        (f"sustained ≥ 0.95 of the limit ({sustained:.3f})", sustained >= 0.95),
        (f"429s < 1% of requests ({rate_429:.2%})", rate_429 < 0.01),
        (f"no row lost ({lost:,})", lost == 0),
    ]
    if ours["error"]:
        checks.append((f"finished ({ours['error']})", False))
    for peer in peers:
        lead = peer["seconds"] - ours["seconds"]
        why = "it failed" if beaten(peer) else f"{lead:+.2f} s"
        checks.append((f"ahead of {peer['client']} ({why})", not ours["error"] and (beaten(peer) or lead > 0)))
    return "targets: " + "; ".join(f"{what}: {'met' if ok else 'NOT met'}" for what, ok in checks)


def markdown_table(sections: list[tuple[Scenario, list[str], int, list[dict]]]) -> str:
    """One markdown table: a row per scenario and client, the scenario named on its first row."""
    columns = [
        "scenario",
        "client",
        "seconds",
        "sustained ÷ limit",
        "429s ÷ requests",
        "rows lost",
        "time ÷ lower bound",
    ]
    lines = ["| " + " | ".join(columns) + " |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for scenario, texts, tokens, results in sections:
        work = work_of(scenario, texts, tokens)
        for i, r in enumerate(results):
            f = figures(scenario, work, r)
            name = describe(scenario, len(texts), tokens, work) if i == 0 else ""
            seconds = f"{r['seconds']:.2f}" + (" (failed)" if r["error"] else "")
            lines.append(
                f"| {name} | {r['client']} | {seconds} | {f['sustained']:.3f} | {f['rate_429']:.4f} | "
                f"{r['rows_lost']:,} | {f['vs_bound']:.3f} |"
            )
    return "\n".join(lines)


def scaled(scenario: Scenario, quick: bool, window_kind: str, limit_headers: str = "all") -> Scenario:
    """The scenario as run. --quick: a fifth of the time; where a minute is banked, a quarter of the
    limits too (the bank would dominate the run). Smaller windows keep their limits, so a window holds
    the same requests as in the full run."""
    scenario = replace(scenario, window_kind=window_kind, limit_headers=limit_headers)
    if not quick:
        return scenario
    share = 4 if scenario.window >= 60 else 1
    return replace(scenario, seconds=scenario.seconds / 5, rpm=scenario.rpm // share, tpm=scenario.tpm // share)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a scaled-down smoke run, a few minutes in all")
    parser.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated subset of " + ", ".join(CLIENTS))
    names = [s.name for s in SCENARIOS]
    parser.add_argument("--scenarios", default=",".join(names), help="comma-separated subset of " + ", ".join(names))
    parser.add_argument(
        "--runs", type=int, default=1, help="rounds of every client, taken in turn; each client's median run is shown"
    )
    parser.add_argument(
        "--window-kind",
        choices=("bucket", "fixed"),
        default="bucket",
        help="how the server banks its window: a token bucket (default) or fixed windows",
    )
    parser.add_argument(
        "--limit-headers",
        choices=("all", "remaining"),
        default="all",
        help="the server's x-ratelimit-* headers: limit, remaining and reset (OpenAI's), or what is left only (Azure's)",
    )
    parser.add_argument("--markdown", action="store_true", help="also print one markdown table of every row")
    parser.add_argument(
        "--give-up",
        type=float,
        default=5.0,
        help="stop a client still running after this many times the lower bound (0: never)",
    )
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # each scenario's table as it ends, when sent to a file too
    clients, sections = args.clients.split(","), []
    for scenario in SCENARIOS:
        if scenario.name not in args.scenarios.split(","):
            continue
        scenario = scaled(scenario, args.quick, args.window_kind, args.limit_headers)
        texts = corpus(scenario)
        tokens = sum(len(t) for t in cl100k_base().encode_ordinary_batch(texts))
        give_up = args.give_up * lower_bound(scenario, work_of(scenario, texts, tokens)) + 10 if args.give_up else None
        rounds = [[measure(client, scenario, texts, give_up) for client in clients] for _ in range(max(1, args.runs))]
        results = [median_run([runs[i] for runs in rounds]) for i in range(len(clients))]
        report(scenario, texts, tokens, results)
        sections.append((scenario, texts, tokens, results))
    if args.markdown:
        print("\n" + markdown_table(sections))


def median_run(runs: list[dict]) -> dict:
    """The run of median time (the faster middle one of an even count), with every run's time."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    return {**ordered[(len(ordered) - 1) // 2], "all_seconds": [r["seconds"] for r in runs]}


if __name__ == "__main__":
    main()
