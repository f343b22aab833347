"""The Batch API path against the loopback server's files and batches."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.errors import ProviderError
from pipeline.providers.batch_files import MAX_FILE_INPUTS, BatchPlanner
from pipeline.run.steps import run_pipeline
from tests.conftest import openai_config, write_parquet
from tests.fakes import openai_server
from tests.fakes.openai_server import FakeOpenAI, fake_vector

TEXTS = [f"order {i} arrived damaged, box {i % 5} crushed" for i in range(300)]


@pytest.fixture
def server():
    with FakeOpenAI(shuffle=True) as fake:
        fake.batch_api.duration = 0.3
        yield fake


def batch_config(tmp_path, server, **overrides):
    source = write_parquet(tmp_path / "in.parquet", {"id": list(range(len(TEXTS))), "text": TEXTS})
    settings = {"embedding__provider": "openai-batch", "embedding__batch_poll_seconds": 0.05, "embedding__batch_max_inputs_per_file": 100, **overrides}
    return openai_config(tmp_path, server, source, **settings)


def assert_output_exact(config):
    table = pq.read_table(config.output.path)
    assert table.column("id").to_pylist() == list(range(len(TEXTS)))
    np.testing.assert_allclose(np.array(table.column("embedding").to_pylist()), np.stack([fake_vector(t, 16) for t in TEXTS]), atol=1e-6)


def test_a_batch_run_embeds_everything_through_batches_and_no_sync_call(tmp_path, server):
    config = batch_config(tmp_path, server)
    manifest = run_pipeline(config)
    assert_output_exact(config)
    assert manifest["stats"]["batch_api"]["batches"] == 3 and manifest["stats"]["batch_api"]["inputs"] == 300
    assert server.requests == 0, "nothing went through the sync endpoint"
    assert max(server.batch_api.submitted.values()) == 1


def test_batch_and_sync_runs_write_identical_files(tmp_path, server):
    batch = batch_config(tmp_path / "b", server)
    run_pipeline(batch)
    sync = batch_config(tmp_path / "s", server, embedding__provider="openai")
    run_pipeline(sync)
    a, b = pq.read_table(batch.output.path), pq.read_table(sync.output.path)
    assert a.drop(["embedding"]).equals(b.drop(["embedding"])) and a.column("embedding").equals(b.column("embedding"))


@pytest.mark.parametrize("inject, resubmitted", [
    (lambda api: setattr(api, "expire_next", 1), 50),  # half of a 100-text batch never ran
    (lambda api: setattr(api, "cancel_next", 1), 67),  # cancelled after a third: two thirds never ran
    (lambda api: api.fail_texts.update(TEXTS[:3]), 3),  # per-request errors, once each
])
def test_expired_and_failed_requests_are_resubmitted_and_nothing_else(tmp_path, server, inject, resubmitted):
    inject(server.batch_api)
    config = batch_config(tmp_path, server, embedding__batch_size=1)
    manifest = run_pipeline(config)
    assert_output_exact(config)
    assert manifest["stats"]["batch_api"]["resubmitted_texts"] == resubmitted
    assert sum(n - 1 for n in server.batch_api.submitted.values()) == resubmitted, "only what did not come back is sent again"
    assert server.requests == 0


def test_requests_that_keep_failing_go_to_the_sync_endpoint_when_allowed(tmp_path, server):
    server.batch_api.fail_texts.update({text: 100 for text in TEXTS[:2]})
    with pytest.raises(ProviderError, match="batch_fallback_sync"):
        run_pipeline(batch_config(tmp_path / "a", server))
    config = batch_config(tmp_path / "b", server, embedding__batch_fallback_sync=True)
    run_pipeline(config)
    assert_output_exact(config)
    assert set(server.calls) == set(TEXTS[:2]), "only the failing texts used the sync endpoint"


def test_a_failed_batch_reports_the_validation_errors(tmp_path, server):
    config = batch_config(tmp_path, server)
    original = server.batch_api._create

    def broken(body):
        body["completion_window"] = "1h"
        return original(body)

    server.batch_api._create = broken
    with pytest.raises(ProviderError, match="failed validation: endpoint must be"):
        run_pipeline(config)


@pytest.mark.parametrize("killed_before_recording_batch_ids", [False, True])
def test_a_killed_run_restarts_reattaches_and_submits_nothing_twice(tmp_path, server, killed_before_recording_batch_ids):
    server.batch_api.duration = 3600  # batches stay in flight
    config = batch_config(tmp_path, server)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config.model_dump()))
    script = "import sys; from pipeline.config import load_config; from pipeline.run.steps import run_pipeline; run_pipeline(load_config(sys.argv[1]))"
    process = subprocess.Popen([sys.executable, "-c", script, str(path)], cwd=Path(__file__).parents[3])
    deadline = time.monotonic() + 60
    while len(server.batch_api.batches) < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.kill()  # killed while three batches are in flight
    process.wait()
    assert len(server.batch_api.batches) == 3
    if killed_before_recording_batch_ids:  # the batches exist, the ledger only knows their files
        [ledger] = (tmp_path / "cache" / "batches").glob("*/ledger.jsonl")
        ledger.write_text("".join(line + "\n" for line in ledger.read_text().splitlines() if '"submitted"' not in line))
    for batch in server.batch_api.batches.values():
        batch["started"] -= 3600  # the night passed: they are done now
    manifest = run_pipeline(config)
    assert_output_exact(config)
    assert len(server.batch_api.batches) == 3, "the restarted run created no new batch"
    assert max(server.batch_api.submitted.values()) == 1
    assert manifest["stats"]["batch_api"]["reattached"] == 3


@pytest.mark.parametrize("count, tokens, max_inputs, expected_files", [
    (120_000, 1, MAX_FILE_INPUTS, [50_000, 50_000, 20_000]),
    (10, 1, 4, [4, 4, 2]),
])
def test_planner_keeps_files_within_the_limits(count, tokens, max_inputs, expected_files):
    planner, files = BatchPlanner(max_inputs), []
    for i in range(count):
        full = planner.add(f"t{i}", tokens)
        files += [full] if full else []
    files.append(planner.flush())
    assert [f.inputs for f in files] == expected_files
    assert all(len(r) <= 2048 for f in files for r in f.requests)


def test_planner_splits_requests_at_300k_tokens():
    planner = BatchPlanner()
    for i in range(80):
        planner.add(f"long {i}", 8000)
    file = planner.flush()
    assert [len(r) for r in file.requests] == [37, 37, 6]


def test_a_small_enqueued_token_budget_feeds_batches_in_waves(tmp_path, server):
    config = batch_config(tmp_path, server, embedding__batch_max_enqueued_tokens=1_500)  # about one file of 100 texts
    run_pipeline(config)
    assert_output_exact(config)
    starts = sorted(b["started"] for b in server.batch_api.batches.values())
    assert len(starts) == 3
    assert all(later - earlier >= server.batch_api.duration for earlier, later in zip(starts, starts[1:])), "a wave waits for the last"


def test_planner_never_puts_more_than_the_enqueued_budget_in_one_file():
    planner, files = BatchPlanner(max_tokens=1_000), []
    for i in range(30):
        full = planner.add(f"t{i}", 100)
        files += [full] if full else []
    files.append(planner.flush())
    assert [f.tokens for f in files] == [1_000, 1_000, 1_000]


def spoil_first_answer(api, corruption: str) -> None:
    """The first request a batch runs gets a malformed answer (`corruption` from the fake server)."""
    embed, pending = api.embed_body, [getattr(openai_server, corruption)]

    def spoiled(body):
        status, payload = embed(body)
        return status, pending.pop()(payload) if pending and status == 200 else payload

    api.embed_body = spoiled


def spoil_first_line(api, spoil) -> None:
    """The first line of the first output file is replaced by `spoil(that line's record)`."""
    store, pending = api._store, [spoil]

    def spoiled(records):
        file_id = store(records)
        if file_id and pending:
            first, *rest = api.files[file_id].decode().splitlines(keepends=True)
            api.files[file_id] = (pending.pop()(json.loads(first)) + "\n" + "".join(rest)).encode()
        return file_id

    api._store = spoiled


def with_fields(**changes):
    """A line spoiler: the record as JSON, each field in `changes` replaced by change(its value)."""
    return lambda record: json.dumps({**record, **{name: change(record[name]) for name, change in changes.items()}})


# a malformed output line or answer -> how it is injected; its one text is sent again in a new batch
BATCH_MALFORMED = {
    "vector cut short": lambda api: spoil_first_answer(api, "truncated_base64"),
    "invalid base64": lambda api: spoil_first_answer(api, "invalid_base64"),
    "vector a number": lambda api: spoil_first_answer(api, "vector_as_number"),
    "index a string": lambda api: spoil_first_answer(api, "index_as_string"),
    "data not a list": lambda api: spoil_first_answer(api, "data_not_a_list"),
    "body a JSON array": lambda api: spoil_first_answer(api, "json_array_body"),
    "line not JSON": lambda api: spoil_first_line(api, lambda record: json.dumps(record)[:40]),
    "line a JSON array": lambda api: spoil_first_line(api, lambda record: json.dumps([record])),
    "custom_id a list": lambda api: spoil_first_line(api, with_fields(custom_id=lambda old: [old])),
    "response a string": lambda api: spoil_first_line(api, with_fields(response=lambda old: "ok")),
    "body a string": lambda api: spoil_first_line(api, with_fields(response=lambda old: {**old, "body": "{}"})),
}


@pytest.mark.parametrize("malformed", BATCH_MALFORMED)
def test_a_malformed_batch_output_sends_only_its_texts_again(tmp_path, server, malformed):
    BATCH_MALFORMED[malformed](server.batch_api)
    config = batch_config(tmp_path, server, embedding__batch_size=1)
    manifest = run_pipeline(config)
    assert_output_exact(config)
    assert manifest["stats"]["batch_api"]["resubmitted_texts"] == 1
    assert sum(n - 1 for n in server.batch_api.submitted.values()) == 1, "only the spoiled text is sent again"
    assert server.requests == 0
