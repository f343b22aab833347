"""What `cache.shared_path` costs a run (issue 24). A benchmark, not a test.

    .venv/bin/python -m benchmarks.shared_tier --rows 100000
    .venv/bin/python -m benchmarks.shared_tier --rows 20000 --tiers none,directory   # no moto

The input and the loopback OpenAI server are `benchmarks/scale.py`'s (64 dimensions, about 30%
of rows copies of an earlier row's text). For each tier — none, a local directory, a prefix in
moto's S3 server (in this process, on loopback) — a cold run embeds into a fresh local cache and a
fresh tier (every miss is a GET answered 404, every vector paid for a PUT), then a "second host"
run reads everything from the tier into another fresh local cache (nothing sent). Each run is a
child process, as `embedpipe run` runs. moto is a Python server sharing the machine's cores with
the pipeline: its figures are a floor on what a real object store's latency would allow, not S3's.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from pathlib import Path

from benchmarks import scale

TIERS = ("none", "directory", "s3")


def start_moto() -> str:
    """moto's S3 on loopback, with the environment a user's S3 credentials would give."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
    )
    return f"http://{host}:{port}"


def tier_url(tier: str, tmp: Path) -> str | None:
    if tier == "none":
        return None
    if tier == "directory":
        return str(tmp / f"shared-{uuid.uuid4().hex[:8]}")
    import s3fs

    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem().mkdir(bucket)
    return f"s3://{bucket}/vectors"


def run(server: scale.Server, source: Path, tmp: Path, host: str, shared: str | None) -> dict:
    config = scale.pipeline_config(server.base_url, source, tmp / f"cache-{host}", tmp / f"out-{host}")
    config["cache"]["shared_path"] = shared
    result = scale.run_pipeline_in_child(config, tmp / f"{host}.json")
    scale.remove(tmp / f"cache-{host}")
    scale.remove(tmp / f"out-{host}")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--tiers", default=",".join(TIERS), help=f"comma-separated, of {', '.join(TIERS)}")
    args = parser.parse_args(argv)
    tiers = args.tiers.split(",")
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    if "s3" in tiers:
        start_moto()
    with tempfile.TemporaryDirectory(prefix="embedpipe-tier-") as name:
        tmp = Path(name)
        source = tmp / "input.parquet"
        scale.write_input(source, args.rows)
        server = scale.start_server()
        try:
            print(
                f"{args.rows:,} rows | tier | cold rows/s (pipeline CPU s) | second host rows/s (CPU s) "
                "| shared writes | shared hits |"
            )
            for tier in tiers:
                shared = tier_url(tier, tmp)
                cold = run(server, source, tmp, f"{tier}-a", shared)
                second = run(server, source, tmp, f"{tier}-b", shared)
                print(
                    f"| {tier} | {args.rows / cold['seconds']:,.0f} ({cold['cpu_seconds']:.1f}) "
                    f"| {args.rows / second['seconds']:,.0f} ({second['cpu_seconds']:.1f}) "
                    f"| {cold['stats'].get('shared_writes', '-')} | {second['stats'].get('shared_hits', '-')} |"
                )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
