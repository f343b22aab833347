"""`embedpipe run | backfill | estimate | batches`: the command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pipeline.config import load_config
from flows.console import live_progress
from pipeline.errors import EmbedpipeError
from pipeline.report import summary_lines


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `embedpipe` console script; returns the exit status."""
    parser = argparse.ArgumentParser(prog="embedpipe", description="Embed tables of text into tables of vectors.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the embed flow once")
    run.add_argument("config", help="YAML run configuration")
    run.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override one config key")
    backfill = commands.add_parser("backfill", help="run every key=value partition of source.path, skipping those up to date")
    backfill.add_argument("config", help="YAML run configuration; source.path holds key=value directories")
    backfill.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override one config key")
    backfill.add_argument("--key", default="date", help="the partition key (default: date)")
    backfill.add_argument("--from", dest="start", help="first partition value, inclusive (e.g. 2026-01-01)")
    backfill.add_argument("--to", dest="end", help="last partition value, inclusive")
    backfill.add_argument("--concurrency", type=int, default=2, help="partitions at once (default: 2)")
    estimate = commands.add_parser("estimate", help="count what a run would send and what it would cost; sends nothing")
    estimate.add_argument("config", help="YAML run configuration")
    estimate.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override one config key")
    estimate.add_argument("--json", action="store_true", help="print the estimate as JSON")
    batches = commands.add_parser("batches", help="list, inspect or cancel Batch API jobs")
    batches.add_argument("action", choices=["list", "status", "cancel"])
    batches.add_argument("batch_id", nargs="?", help="the batch, for status and cancel")
    batches.add_argument("--config", help="YAML run configuration to take base_url and the key's variable from")
    args = parser.parse_args(argv)
    if args.command == "batches":
        return batches_command(parser, args)
    try:
        config = load_config(args.config, args.set)
        if args.command == "estimate":
            return estimate_command(config, args.json)
        prepare_prefect()
        if args.command == "backfill":
            from flows.backfill import backfill as backfill_flow

            with live_progress(sys.stderr.isatty()):
                result = backfill_flow(config, key=args.key, start=args.start, end=args.end, concurrency=max(1, args.concurrency))
            print(f"backfill: {len(result['ran'])} partitions embedded ({result['rows']} rows), {len(result['skipped'])} already up to date")
            return 0
        from flows.embed import embed_dataset

        with live_progress(sys.stderr.isatty()):
            manifest = embed_dataset(config)
    except EmbedpipeError as exc:
        print(f"embedpipe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("embedpipe: interrupted; nothing was published; the next run resumes from what was staged and cached", file=sys.stderr)
        return 130
    print("\n".join(summary_lines(manifest)))
    return 0


def estimate_command(config, as_json: bool) -> int:
    """`embedpipe estimate CONFIG`: no Prefect, no call; errors reach `main`."""
    import json

    from pipeline.estimate import estimate_config

    logging.basicConfig(level=logging.WARNING, format="embedpipe: %(message)s")
    estimate = estimate_config(config, os.environ.get(config.embedding.api_key_env))
    print(json.dumps(estimate.as_dict(), indent=2) if as_json else "\n".join(estimate.lines()))
    return 0


def batches_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """`embedpipe batches list | status ID | cancel ID`."""
    if args.action != "list" and not args.batch_id:
        parser.error(f"batches {args.action} needs a batch id")
    from pipeline.config import EmbeddingConfig
    from pipeline.providers.openai_batch import OpenAIBatchEmbedder, batch_command

    try:
        embedding = load_config(args.config).embedding if args.config else EmbeddingConfig()
        settings = embedding.model_copy(update={"provider": "openai-batch"})
        embedder = OpenAIBatchEmbedder(settings, os.environ.get(settings.api_key_env))
        print("\n".join(batch_command(embedder, args.action, args.batch_id)) or "no batches")
    except EmbedpipeError as exc:
        print(f"embedpipe: error: {exc}", file=sys.stderr)
        return 2
    return 0


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
    logging.getLogger("prefect").addFilter(_UserErrorsWithoutTraceback())
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(_UserErrorsWithoutTraceback())


class _UserErrorsWithoutTraceback(logging.Filter):
    """Prefect logs a failed task with its traceback; for a user's mistake the message is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], EmbedpipeError):
            record.exc_info = None
            record.exc_text = None
        return True


if __name__ == "__main__":
    sys.exit(main())
