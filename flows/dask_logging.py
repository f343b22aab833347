"""What the workers of a local Dask cluster log: distributed's own, less one record of its shutdown.

Importing this module imports `distributed`: only the Dask path does.
"""

from __future__ import annotations

import logging

from distributed.comm.core import CommClosedError
from distributed.diagnostics.plugin import WorkerPlugin

HEARTBEAT_FAILED = "Failed to communicate with scheduler during heartbeat"


class _HeartbeatAfterClose(logging.Filter):
    """Drops a worker's heartbeat that found the scheduler's connection closed, with its traceback.
    In a cluster the run started, the scheduler lives in the run's process and closes only when
    the run closes the cluster: a worker still starting then (the one a dead worker's nanny
    started again, say) logs this race in distributed's shutdown as an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        closed = record.exc_info and isinstance(record.exc_info[1], CommClosedError)
        return not (closed and record.getMessage().startswith(HEARTBEAT_FAILED))


HEARTBEAT_AFTER_CLOSE = _HeartbeatAfterClose()


class QuietShutdown(WorkerPlugin):
    """Installs `HEARTBEAT_AFTER_CLOSE` in each worker of the cluster, and in those started later."""

    name = "embedpipe-quiet-shutdown"

    def setup(self, worker) -> None:
        logger = logging.getLogger("distributed.worker")
        if HEARTBEAT_AFTER_CLOSE not in logger.filters:
            logger.addFilter(HEARTBEAT_AFTER_CLOSE)
