"""`stop_every_embedder`, what a signal calls: nothing leaves after it, what was on the wire is kept."""

import threading
import time

import pytest

from pipeline.errors import ProviderError
from pipeline.providers.base import stop_every_embedder, wait_for_requests
from pipeline.run.steps import run_pipeline
from tests.conftest import openai_config, write_parquet
from tests.fakes.openai_server import FakeOpenAI

TEXTS = [f"order {i} arrived damaged" for i in range(200)]


def stop_when(condition, stopped: list) -> threading.Thread:
    def watch():
        while not condition():
            time.sleep(0.01)
        stopped.append(time.monotonic())
        stop_every_embedder("stopped by the test")

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


# what the requests are doing when the stop comes -> the server's limits, the run's settings
WAITING = {
    "waiting for budget": ({"rpm": 6}, {}),  # six at once, then one each 10 s
    "queued behind the concurrency limit": ({}, {"embedding__max_concurrency": 1}),
}


@pytest.mark.parametrize("waiting", WAITING)
def test_after_a_stop_no_request_leaves_and_answers_on_the_wire_are_cached(tmp_path, waiting):
    source = write_parquet(tmp_path / "in.parquet", {"id": list(range(len(TEXTS))), "text": TEXTS})
    limits, settings = WAITING[waiting]
    with FakeOpenAI(latency=0.3, **limits) as server:
        config = openai_config(tmp_path, server, source, embedding__batch_size=10, **settings)
        stopped: list[float] = []
        stop_when(lambda: len(server.admitted) >= 3, stopped)
        with pytest.raises(ProviderError, match="stopped by the test"):
            run_pipeline(config)
        assert wait_for_requests(1.0) == 0
        late = [t for t in server.admitted if t > stopped[0] + 0.2]  # one written just before may still be arriving
        assert late == [], "a request left after the stop"
        paid = sum(server.calls.values())
        server.set_limits(rpm=10**6)  # the run after: no waiting
        manifest = run_pipeline(openai_config(tmp_path, server, source, embedding__batch_size=10))  # same cache
    assert max(server.calls.values()) == 1, "an answer on the wire at the stop was not cached"
    assert manifest["stats"]["cache_hits"] == paid
