"""`embedpipe run | backfill | estimate | batches | similar | neighbours | cluster | cache`: the command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from flows import signals
from flows.console import hide_user_error_tracebacks, live_progress
from pipeline.config import load_config
from pipeline.errors import EmbedpipeError
from pipeline.providers import check_embedding_config, check_truncation
from pipeline.run.report import summary_lines
from pipeline.text.tokens import load_tokenizer_ahead


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `embedpipe` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "batches" and args.action != "list" and not args.batch_id:
        parser.error(f"batches {args.action} needs a batch id")
    if args.command in SPENDING:
        signals.stop_on_signals()
    try:
        return COMMANDS[args.command](args)
    except EmbedpipeError as exc:
        signals.wait_if_stopping()
        print(f"embedpipe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "embedpipe: interrupted; nothing was published; the next run resumes from what was staged and cached",
            file=sys.stderr,
        )
        return 130
    finally:
        signals.wait_if_stopping()


def build_parser() -> argparse.ArgumentParser:
    """Every command and its options."""
    parser = argparse.ArgumentParser(prog="embedpipe", description="Embed tables of text into tables of vectors.")
    commands = parser.add_subparsers(dest="command", required=True)
    _with_config(commands.add_parser("run", help="run the embed flow once"))
    backfill = _with_config(
        commands.add_parser("backfill", help="run every key=value partition of source.path, skipping those up to date")
    )
    backfill.add_argument("--key", default="date", help="the partition key (default: date)")
    backfill.add_argument("--from", dest="start", help="first partition value, inclusive (e.g. 2026-01-01)")
    backfill.add_argument("--to", dest="end", help="last partition value, inclusive")
    backfill.add_argument("--concurrency", type=int, default=2, help="partitions at once (default: 2)")
    estimate = _with_config(
        commands.add_parser("estimate", help="count what a run would send and what it would cost; sends nothing")
    )
    estimate.add_argument("--json", action="store_true", help="print the estimate as JSON")
    batches = commands.add_parser("batches", help="list, inspect or cancel Batch API jobs")
    batches.add_argument("action", choices=["list", "status", "cancel"])
    batches.add_argument("batch_id", nargs="?", help="the batch, for status and cancel")
    batches.add_argument("--config", help="YAML run configuration to take base_url and the key's variable from")
    deploy = _with_config(
        commands.add_parser("deploy", help="run the embed flow on a schedule against a Prefect server")
    )
    deploy.add_argument("--cron", required=True, help='when to run, e.g. "0 * * * *" (hourly)')
    deploy.add_argument("--name", default="scheduled", help="the deployment's name (default: scheduled)")
    deploy.add_argument(
        "--pool", help="register on this work pool for a worker to run; without it, serve here until stopped"
    )
    similar = commands.add_parser("similar", help="the rows of an output nearest to a query")
    similar.add_argument("output", help="an output.path that embedpipe run wrote")
    similar.add_argument("--query", required=True, help="the text to search for")
    similar.add_argument("-k", type=int, default=10, help="rows to show (default: 10)")
    similar.add_argument("--config", help="YAML run configuration to take base_url and the key's variable from")
    similar.add_argument("--column", help="the vector column to search (default: the last run's)")
    neighbours = commands.add_parser(
        "neighbours", help="write every row's k nearest rows to Parquet (the neighbours flow)"
    )
    neighbours.add_argument("output", help="an output.path that embedpipe run wrote")
    neighbours.add_argument("-k", type=int, default=10, help="neighbours per row (default: 10)")
    neighbours.add_argument(
        "--method", choices=["auto", "exact", "approximate"], default="auto", help="auto: exact up to a million rows"
    )
    neighbours.add_argument("--to", help="where to write neighbours.parquet (default: OUTPUT-neighbours)")
    neighbours.add_argument("--column", help="the vector column (default: the last run's)")
    cluster = commands.add_parser("cluster", help="k-means clusters of an output, with a PNG map (the cluster flow)")
    cluster.add_argument("output", help="an output.path that embedpipe run wrote")
    cluster.add_argument("--k", type=int, help="clusters (default: chosen by silhouette score)")
    cluster.add_argument("--to", help="where to write the results (default: OUTPUT-clusters)")
    cluster.add_argument("--column", help="the vector column (default: the last run's)")
    cache = commands.add_parser("cache", help="check the vector cache for damaged entries, or drop them")
    cache.add_argument(
        "action", choices=["check", "repair"], help="check: count what is damaged; repair: drop it, keep the rest"
    )
    cache.add_argument("target", help="a YAML run configuration (its cache.path) or a cache directory")
    cache.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override one config key"
    )
    return parser


def _with_config(command: argparse.ArgumentParser) -> argparse.ArgumentParser:
    command.add_argument("config", help="YAML run configuration")
    command.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override one config key"
    )
    return command


def run_command(args: argparse.Namespace) -> int:
    """`embedpipe run CONFIG`: the embed flow once, then its summary."""
    config = load_config(args.config, args.set)
    check_embedding_config(config.embedding)  # before Prefect starts: a refusal is instant
    check_truncation(config.embedding, config.output.dimensions_truncate)
    prepare_prefect()
    from flows.embed import embed_dataset

    load_tokenizer_ahead()  # while Prefect's temporary server starts, not on the way to the first request
    with live_progress(sys.stderr.isatty()):
        manifest = embed_dataset(config)
    print("\n".join(summary_lines(manifest)))
    return 0


def backfill_command(args: argparse.Namespace) -> int:
    """`embedpipe backfill CONFIG`: the backfill flow over key=value partitions."""
    config = load_config(args.config, args.set)
    check_embedding_config(config.embedding)  # before Prefect starts: a refusal is instant
    prepare_prefect()
    from flows.backfill import backfill as backfill_flow

    load_tokenizer_ahead()
    with live_progress(sys.stderr.isatty()):
        result = backfill_flow(
            config, key=args.key, start=args.start, end=args.end, concurrency=max(1, args.concurrency)
        )
    print(
        f"backfill: {len(result['ran'])} partitions embedded ({result['rows']} rows), {len(result['skipped'])} "
        "already up to date"
    )
    return 0


def estimate_command(args: argparse.Namespace) -> int:
    """`embedpipe estimate CONFIG`: no Prefect, no call."""
    import json

    from pipeline.run.estimate import estimate_config

    config = load_config(args.config, args.set)
    logging.basicConfig(level=logging.WARNING, format="embedpipe: %(message)s")
    estimate = estimate_config(config, os.environ.get(config.embedding.api_key_env))
    print(json.dumps(estimate.as_dict(), indent=2) if args.json else "\n".join(estimate.lines()))
    return 0


def deploy_command(args: argparse.Namespace) -> int:
    """`embedpipe deploy CONFIG --cron ...`: checked now, so a typo fails here and not at 3 am."""
    config = load_config(args.config, args.set)
    check_embedding_config(config.embedding)  # before Prefect starts: a refusal is instant
    prepare_prefect()
    from flows.deploy import deploy

    deployment = deploy(config, args.cron, args.name, args.pool)
    print(
        f"deployment embed-dataset/{args.name} ({deployment}) runs on {args.cron!r} from work pool {args.pool}; start "
        f"a worker: prefect worker start --pool {args.pool}"
    )
    return 0


def batches_command(args: argparse.Namespace) -> int:
    """`embedpipe batches list | status ID | cancel ID`."""
    from pipeline.providers import batch_api_embedder

    settings = _embedding_settings(args.config)
    embedder = batch_api_embedder(settings, os.environ.get(settings.api_key_env))
    print("\n".join(embedder.batch_lines(args.action, args.batch_id or "")) or "no batches")
    return 0


def similar_command(args: argparse.Namespace) -> int:
    """`embedpipe similar OUTPUT --query TEXT`: embed the query as the output's rows were, print the nearest."""
    from pipeline.downstream.similarity import check_query_model, embed_query, read_output, search

    embedded = read_output(args.output, args.column)
    settings = _embedding_settings(args.config)
    if args.config:  # a config names a model: it must be the column's
        check_query_model(settings, embedded)
    query = embed_query(args.query, embedded.settings, settings, os.environ.get(settings.api_key_env))
    indices, scores = search(embedded, query[None, :], args.k)
    print(f"rows of {args.output} nearest to {args.query!r}:")
    for index, score in zip(indices[0], scores[0]):
        text = embedded.texts[int(index)].as_py() if embedded.texts is not None else ""
        print(f"  {score:6.3f}  {embedded.ids[int(index)].as_py()!s:<24} {_snippet(text)}")
    return 0


def neighbours_command(args: argparse.Namespace) -> int:
    """`embedpipe neighbours OUTPUT`: the neighbours flow."""
    prepare_prefect()
    from flows.downstream import neighbours_flow

    result = neighbours_flow(args.output, k=args.k, method=args.method, to=args.to, column=args.column)
    print(f"neighbours: {result['rows']:,} rows, {args.k} each, written to {result['path']}")
    return 0


def cluster_command(args: argparse.Namespace) -> int:
    """`embedpipe cluster OUTPUT`: the cluster flow."""
    prepare_prefect()
    from flows.downstream import cluster_flow

    result = cluster_flow(args.output, k=args.k, to=args.to, column=args.column)
    print(
        f"clusters: {result['how']}; written to {result['folder']} (clusters.parquet, cluster_summary.parquet, "
        "clusters.png)"
    )
    for cluster, (size, centrals) in enumerate(zip(result["sizes"], result["centrals"])):
        print(f"  {cluster:>3}  {size:>7,}  {_snippet(centrals[0] if centrals else '')}")
    return 0


def cache_command(args: argparse.Namespace) -> int:
    """`embedpipe cache check | repair TARGET`: exit 1 when check finds damage; no Prefect."""
    from pipeline.cache.repair import cache_directory, check_cache, repair_cache

    path = cache_directory(args.target, args.set)
    if args.action == "repair":
        print("\n".join(repair_cache(path).repair_lines()))
        return 0
    report = check_cache(path)
    print("\n".join(report.check_lines(args.target)))
    return 0 if report.clean else 1


def _embedding_settings(config_path: str | None):
    from pipeline.config import EmbeddingConfig

    return load_config(config_path).embedding if config_path else EmbeddingConfig()


def _snippet(text: str | None, width: int = 90) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


SPENDING = {"run", "backfill"}  # commands whose Ctrl-C must stop the requests at once (flows.signals)
COMMANDS = {
    "run": run_command,
    "backfill": backfill_command,
    "estimate": estimate_command,
    "deploy": deploy_command,
    "batches": batches_command,
    "similar": similar_command,
    "neighbours": neighbours_command,
    "cluster": cluster_command,
    "cache": cache_command,
}


def prepare_prefect() -> None:
    """Settings that must be in place before Prefect is imported.

    Without PREFECT_API_URL Prefect starts a temporary local server. Offline, that server's
    telemetry fails noisily and its shutdown logs tracebacks; analytics off and its own log
    level raised quiet it. Both are set only for that server, never for the flow's logs.
    """
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "embedpipe")
    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("PREFECT_LOGGING_SERVER_LEVEL", "CRITICAL")
    logging.getLogger("embedpipe").setLevel(logging.INFO)
    hide_user_error_tracebacks()


if __name__ == "__main__":
    sys.exit(main())
