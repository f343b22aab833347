"""`embedpipe run` as a user runs it: a subprocess, Prefect's temporary server, real HTTP."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import write_parquet

SECRET = "sk-test-0123456789-never-print-me"


def embedpipe(args, prefect_home: Path, cwd: Path):
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "OPENAI_API_KEY": SECRET}
    env.pop("PREFECT_API_URL", None)
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def write_config(tmp_path, server, source, text_column="text", api_key_env="OPENAI_API_KEY"):
    """A run config for `server`; `api_key_env` None leaves the key's variable out, as a new user might."""
    path = tmp_path / "run.yaml"
    path.write_text(
        f"source:\n  path: {source}\n  text_column: {text_column}\n"
        f"embedding:\n  provider: openai\n  model: text-embedding-3-small\n  dimensions: 16\n  base_url: {server.base_url}\n"
        + (f"  api_key_env: {api_key_env}\n" if api_key_env else "")
        + f"cache:\n  path: {tmp_path / 'cache'}\noutput:\n  path: {tmp_path / 'out'}\n"
    )
    return path


def every_byte_under(*roots: Path) -> bytes:
    return b"".join(p.read_bytes() for root in roots for p in sorted(root.rglob("*")) if p.is_file())


def artifact_keys(prefect_home: Path) -> set[str]:
    with sqlite3.connect(prefect_home / "prefect.db") as db:
        return {key for (key,) in db.execute("SELECT key FROM artifact")}


def test_a_clean_run_embeds_every_row_reports_and_prints_no_noise(tmp_path, fake_openai, prefect_home):
    source = write_parquet(tmp_path / "docs.parquet", {"id": [1, 2, 3], "text": ["alpha", None, "alpha"]})
    result = embedpipe(["run", str(write_config(tmp_path, fake_openai, source))], prefect_home, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for line in ("rows           3 (0 in unchanged files, 0 equal to the last output, 1 blank)", "distinct texts 1 in 1 chunks", "sent           1 chunks, 1 tokens in 1 requests", "cost           $0.000000"):
        assert line in result.stdout
    for noise in ("Traceback", "Error flushing", "telemetry", "ERROR"):
        assert noise not in output
    assert pq.read_table(tmp_path / "out" / "part-00000.parquet").num_rows == 3
    assert {"embedpipe-progress", "embedpipe-run-summary"} <= artifact_keys(prefect_home)
    # the key: not in what was printed, written, cached, logged or kept as an artifact
    assert SECRET.encode() not in output.encode() + every_byte_under(tmp_path, prefect_home)


def test_estimate_counts_what_a_run_then_sends_and_calls_nothing(tmp_path, fake_openai, prefect_home):
    source = write_parquet(tmp_path / "docs.parquet", {"id": [1, 2, 3, 4], "text": ["alpha beta", None, "alpha beta", "gamma"]})
    config = str(write_config(tmp_path, fake_openai, source))
    estimate = embedpipe(["estimate", config, "--json"], prefect_home, tmp_path)
    assert estimate.returncode == 0, estimate.stderr
    assert fake_openai.requests == 0
    counted = json.loads(estimate.stdout)
    run = embedpipe(["run", config], prefect_home, tmp_path)
    sent = json.loads((tmp_path / "out" / "_manifest.json").read_text())["stats"]
    assert (counted["tokens_to_send"], counted["requests"]) == (sent["embedded_tokens"], sent["requests"]) == (3, 1), run.stderr
    assert embedpipe(["estimate", config], prefect_home, tmp_path).stdout.splitlines()[3] == "  to send: chunks 0, tokens 0, requests 0"


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "missing.yaml"], "missing.yaml not found"),
        (["run", "{config}", "--set", "embedding.modle=x"], "unknown key embedding.modle"),
        (["run", "{config}", "--set", "source.text_column=body"], "column 'body' not found"),
    ],
)
def test_a_users_mistake_is_one_line_and_no_traceback(tmp_path, fake_openai, prefect_home, args, message):
    source = write_parquet(tmp_path / "docs.parquet", {"id": [1], "text": ["alpha"]})
    config = write_config(tmp_path, fake_openai, source)
    result = embedpipe([a.format(config=config) for a in args], prefect_home, tmp_path)
    assert result.returncode == 2
    [error] = [line for line in result.stderr.splitlines() if line.startswith("embedpipe: error: ")]
    assert message in error
    assert "Traceback" not in result.stdout + result.stderr
    assert fake_openai.requests == 0


def test_batches_commands_list_inspect_and_cancel(tmp_path, fake_openai, prefect_home):
    fake_openai.batch_api.duration = 3600
    upload = fake_openai.batch_api.handle
    line = b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "text-embedding-3-small", "input": ["x"]}}\n'
    fake_openai.batch_api.files["file-in"] = line
    _, batch, _ = upload("POST", "/v1/batches", {}, b'{"input_file_id": "file-in", "endpoint": "/v1/embeddings", "completion_window": "24h"}')
    config = write_config(tmp_path, fake_openai, tmp_path / "unused.parquet")
    listed = embedpipe(["batches", "list", "--config", str(config)], prefect_home, tmp_path)
    assert listed.returncode == 0 and batch["id"] in listed.stdout
    status = embedpipe(["batches", "status", batch["id"], "--config", str(config)], prefect_home, tmp_path)
    assert "validating" in status.stdout or "in_progress" in status.stdout
    cancelled = embedpipe(["batches", "cancel", batch["id"], "--config", str(config)], prefect_home, tmp_path)
    assert "cancelled" in cancelled.stdout
    missing = embedpipe(["batches", "status", "batch_nope", "--config", str(config)], prefect_home, tmp_path)
    assert missing.returncode == 2 and "HTTP 404" in missing.stderr and "Traceback" not in missing.stderr


def test_backfill_runs_each_partition_once_and_skips_them_after(tmp_path, fake_openai, prefect_home):
    for day in ("2026-01-01", "2026-01-02", "2026-01-03"):
        write_parquet(tmp_path / "in" / f"date={day}" / "part.parquet", {"id": [f"{day}-1", f"{day}-2"], "text": [f"{day} one", f"{day} two"]})
    config = write_config(tmp_path, fake_openai, tmp_path / "in")
    first = embedpipe(["backfill", str(config), "--from", "2026-01-02", "--concurrency", "2"], prefect_home, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "2 partitions embedded (4 rows), 0 already up to date" in first.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["date=2026-01-02", "date=2026-01-03"]
    requests = fake_openai.requests
    again = embedpipe(["backfill", str(config), "--from", "2026-01-02"], prefect_home, tmp_path)
    assert "0 partitions embedded (0 rows), 2 already up to date" in again.stdout
    assert fake_openai.requests == requests and "Traceback" not in again.stdout + again.stderr


def test_similar_neighbours_and_cluster_run_on_an_output(tmp_path, fake_openai, prefect_home):
    texts = [f"{topic} question number {i}" for topic in ("billing", "shipping", "login") for i in range(20)]
    source = write_parquet(tmp_path / "docs.parquet", {"id": list(range(len(texts))), "text": texts})
    config = write_config(tmp_path, fake_openai, source)
    assert embedpipe(["run", str(config)], prefect_home, tmp_path).returncode == 0
    out = str(tmp_path / "out")
    similar = embedpipe(["similar", out, "--query", "shipping question number 7", "-k", "3", "--config", str(config)], prefect_home, tmp_path)
    assert similar.returncode == 0, similar.stderr
    assert similar.stdout.splitlines()[1].split()[:3] == ["1.000", "27", "shipping"]  # the same text: score 1
    neighbours = embedpipe(["neighbours", out, "-k", "4"], prefect_home, tmp_path)
    assert neighbours.returncode == 0, neighbours.stderr
    table = pq.read_table(tmp_path / "out-neighbours" / "neighbours.parquet")
    assert table.num_rows == 60 and {len(n) for n in table.column("neighbour_ids").to_pylist()} == {4}
    cluster = embedpipe(["cluster", out, "--k", "3"], prefect_home, tmp_path)
    assert cluster.returncode == 0, cluster.stderr
    assert (tmp_path / "out-clusters" / "clusters.png").stat().st_size > 10_000
    assert pq.read_table(tmp_path / "out-clusters" / "clusters.parquet").column("cluster").to_pylist().__len__() == 60
    assert {"embedpipe-neighbours", "embedpipe-clusters", "embedpipe-cluster-map"} <= artifact_keys(prefect_home)


def test_a_server_that_keeps_answering_malformed_is_one_line_and_no_traceback(tmp_path, fake_openai, prefect_home):
    from tests.fakes.openai_server import truncated_base64

    fake_openai.corruptions.extend([truncated_base64] * 100)  # every vector cut short
    source = write_parquet(tmp_path / "docs.parquet", {"id": [1, 2, 3], "text": ["alpha", "beta", "gamma"]})
    config = str(write_config(tmp_path, fake_openai, source))
    result = embedpipe(["run", config, "--set", "embedding.max_attempts=2"], prefect_home, tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    [error] = [line for line in result.stderr.splitlines() if line.startswith("embedpipe: error: ")]
    assert "2 attempts at 3 texts failed" in error and "cut short" in error
    assert "Traceback" not in result.stdout + result.stderr
    assert fake_openai.requests == 2


KEYED_COMMANDS = [["run", "{config}"], ["estimate", "{config}"], ["batches", "list", "--config", "{config}"]]


@pytest.mark.parametrize("command", KEYED_COMMANDS)
def test_another_server_without_a_named_key_variable_is_refused_at_once(tmp_path, fake_openai, prefect_home, command):
    source = write_parquet(tmp_path / "docs.parquet", {"id": [1], "text": ["alpha"]})
    config = write_config(tmp_path, fake_openai, source, api_key_env=None)  # OPENAI_API_KEY is set, as for a user
    result = embedpipe([arg.format(config=config) for arg in command], prefect_home, tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    [error] = [line for line in result.stderr.splitlines() if line.startswith("embedpipe: error: ")]
    assert error.startswith(f"embedpipe: error: embedding.base_url {fake_openai.base_url} is not OpenAI's: ")
    assert "embedding.api_key_env" in error and "Traceback" not in result.stdout + result.stderr
    assert command[0] == "run" or result.stderr.splitlines() == [error]  # run's stderr also holds Prefect's log
    assert SECRET not in result.stdout + result.stderr
    assert fake_openai.requests == 0 and not fake_openai.authorizations, "no request, so no key, reached the server"
