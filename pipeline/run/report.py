"""The end-of-run summary, as lines for a terminal and as Markdown for a Prefect artifact."""

from __future__ import annotations

from pipeline.run.estimate import usd


def _facts(manifest: dict) -> list[tuple[str, str]]:
    s = manifest["stats"]
    retries = ", ".join(f"{cause} {n}" for cause, n in sorted(s["retries"].items())) or "none"
    cost = "unknown (no price for this model)" if s.get("cost_usd") is None else usd(s["cost_usd"])
    bad = s.get("bad_cache_entries", 0)  # manifests written before the cache was checked lack it
    bad_line = f"{bad:,} unusable entries (not finite, zero, wrong size, not bytes): embedded again"
    elsewhere = s.get("in_flight_elsewhere", 0)
    elsewhere_line = f"{elsewhere:,} chunks another process sharing the cache was embedding: awaited, not paid here"
    batches = s.get("batch_api", {}).get("batches", 0)
    sent = f"{s['embedded_chunks']:,} chunks, {s['embedded_tokens']:,} tokens in {s['requests']:,} requests"
    sent += f" and {batches:,} Batch API batches" if batches else ""
    return [
        (
            "rows",
            f"{s['rows']:,} ({s['unchanged_rows']:,} in unchanged files, {s['reused_rows']:,} equal to the last "
            f"output, {s['null_texts']:,} blank)",
        ),
        ("distinct texts", f"{s['distinct_texts']:,} in {s['chunks']:,} chunks"),
        ("cache hits", f"{s['cache_hits']:,} chunks"),
        *([("shared cache", _shared(s))] if "shared_hits" in s else []),  # cache.shared_path set
        *([("bad in cache", bad_line)] if bad else []),
        ("sent", sent),
        *([("in flight", elsewhere_line)] if elsewhere else []),
        ("retries", f"{retries}; 429s {s['rate_limited']:,}; tokens in timed-out attempts {s['timed_out_tokens']:,}"),
        *([("rate limits", _held_back(s["held_back"]))] if s.get("held_back") else []),
        *([("backend", manifest.get("backend_reason") or manifest["backend"])] if manifest.get("backend") else []),
        ("cost", cost),
        ("seconds", f"{s['seconds']:,.1f}"),
        (
            "output",
            f"{manifest['output']} ({manifest['model']} via {manifest['provider']}, {manifest['dimensions']} dims)",
        ),
        *[("vectors", _stored(column, record)) for column, record in manifest.get("vectors", {}).items()],
        *([("iceberg", _committed(manifest["iceberg"]))] if manifest.get("iceberg") else []),
    ]


def _shared(stats: dict) -> str:
    return (
        f"{stats['shared_hits']:,} chunks the local cache lacked, read from cache.shared_path; "
        f"{stats['shared_writes']:,} written to it"
    )


def _committed(iceberg: dict) -> str:
    return (
        f"{iceberg['table']}: one commit; partitions written {iceberg['rewritten_parts']:,}, "
        f"removed {iceberg['removed_parts']:,}"
    )


def _stored(column: str, record: dict) -> str:
    """How a vector column is stored and, where it is compact, what that costs in recall."""
    line = f"{column}: {record.get('model')}, {record.get('dimensions')} dims, {record.get('dtype', 'float32')}"
    if record.get("recall_at_10") is not None:
        line += f"; recall@10 {record['recall_at_10']:.3f} against float32 ({record['recall_sample_rows']:,} rows)"
    return line


def _held_back(held: dict) -> str:
    caps = "; ".join(
        f"embedding.{name}_per_minute {cap:,.0f} held the run below the server's {server:,.0f}"
        for name, (cap, server) in sorted(held.items())
    )
    return caps + ": raise or unset it"


def summary_lines(manifest: dict) -> list[str]:
    """A few lines a person reads after a run."""
    return ["embedpipe run finished"] + [f"  {name:<15}{value}" for name, value in _facts(manifest)]


def summary_markdown(manifest: dict) -> str:
    """The same summary as a Markdown table."""
    rows = "\n".join(f"| {name} | {value} |" for name, value in _facts(manifest))
    return f"# embedpipe run\n\n| | |\n|---|---|\n{rows}\n"
