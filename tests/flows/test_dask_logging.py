"""A local cluster's workers keep distributed's log, less a heartbeat that met the closed scheduler."""

import logging

import pytest
from distributed import Client, LocalCluster
from distributed.comm.core import CommClosedError

from flows.dask_logging import HEARTBEAT_AFTER_CLOSE, QuietShutdown


def record(message: str, exc: BaseException | None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc else None
    return logging.LogRecord("distributed.worker", logging.ERROR, __file__, 1, message, (), exc_info)


@pytest.mark.parametrize(
    "message, exc, shown",
    [
        ("Failed to communicate with scheduler during heartbeat.", CommClosedError("in <TCP>: Stream is closed"), False),
        ("Failed to communicate with scheduler during heartbeat.", OSError("Timed out trying to connect"), True),
        ("Failed to communicate with scheduler during heartbeat.", None, True),
        ("Compute Failed", CommClosedError("Stream is closed"), True),
    ],
)
def test_only_a_heartbeat_that_met_a_closed_scheduler_is_dropped(message, exc, shown):
    assert HEARTBEAT_AFTER_CLOSE.filter(record(message, exc)) is shown


def quiet_in_worker() -> bool:
    return HEARTBEAT_AFTER_CLOSE in logging.getLogger("distributed.worker").filters


def test_every_worker_of_a_cluster_gets_the_filter_once_registered_and_those_started_later_too():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            assert not any(client.run(quiet_in_worker).values())
            client.register_plugin(QuietShutdown())
            cluster.scale(2)
            client.wait_for_workers(2)
            assert list(client.run(quiet_in_worker).values()) == [True, True]
    assert not quiet_in_worker()  # this process, the client's, is left as it was
