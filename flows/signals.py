"""Ctrl-C (SIGINT) and `kill` (SIGTERM) during a run: stop sending at once, keep what was paid
for, and exit within seconds with one line.

The first signal stops every embedder of the process: no request leaves after it. Requests
already on the wire are given `DRAIN_SECONDS` to be answered and their vectors stored in the
cache; then half-written parts are removed (finished ones stay staged for the resume),
Prefect's temporary server is stopped, and the process exits 130 (SIGINT) or 143 (SIGTERM).
A second signal skips the wait. The exit does not unwind through Prefect: with its server
gone (Ctrl-C reaches the whole process group) every state report would retry for minutes.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading

from pipeline.providers.base import stop_every_embedder, wait_for_requests
from pipeline.sinks.parquet import abandon_open_parts

DRAIN_SECONDS = 8.0  # the whole exit must fit in 10 s
SERVER_STOP_SECONDS = 1.0
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

_first: signal.Signals | None = None
_exiting = threading.Lock()
_installed = False


def stop_on_signals() -> None:
    """Handle SIGINT and SIGTERM as described above, for the rest of this process."""
    global _installed
    for signum in EXIT_CODES:
        signal.signal(signum, _handle)
    _installed = True


def reclaim_sigterm() -> None:
    """Prefect's flow engine swaps in a SIGTERM handler of its own while a flow runs; a flow
    the command line started takes SIGTERM back. Elsewhere (a deployment run by a Prefect
    worker, where SIGTERM means cancel) nothing changes."""
    if _installed and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _handle)


def wait_if_stopping() -> None:
    """After a signal, the main thread leaves the exit to the stopping thread instead of ending
    the process with the failure that the stop caused."""
    if _first is not None:
        threading.Event().wait()


def _handle(signum: int, frame) -> None:
    global _first
    if _first is not None:  # the second signal: no more waiting
        _exit_in_thread(signal.Signals(signum), None)
        return
    _first = signal.Signals(signum)
    # What fails from here on fails because of the stop: the line printed at exit says it all
    logging.disable(logging.CRITICAL)
    stop_every_embedder(f"stopped by {_first.name}: no request is sent after it")
    threading.Thread(target=_drain_then_exit, args=(_first,), name="stopping", daemon=True).start()


def _exit_in_thread(signum: signal.Signals, in_flight: int | None) -> None:
    # Not in the handler itself: it may have interrupted the main thread inside a write to
    # stderr, where writing again raises instead of printing the line.
    threading.Thread(target=_exit, args=(signum, in_flight), name="exiting", daemon=True).start()


def _drain_then_exit(signum: signal.Signals) -> None:
    _exit(signum, in_flight=wait_for_requests(DRAIN_SECONDS))


def _exit(signum: signal.Signals, in_flight: int | None) -> None:
    if not _exiting.acquire(blocking=False):
        return  # the other path is already exiting
    try:
        abandon_open_parts()
        clear = "\r\x1b[2K\x1b[?25h" if os.isatty(2) else ""  # the progress bar's line cleared, the cursor shown
        # straight to fd 2, past Python's buffers and their locks
        os.write(2, f"{clear}embedpipe: {_message(signum, in_flight)}\n".encode())
        stop_temporary_prefect_server()
    finally:
        os._exit(EXIT_CODES[signum])


def _message(signum: signal.Signals, in_flight: int | None) -> str:
    if in_flight is None:
        lost = "stopped at once, without waiting for requests on the wire"
    elif in_flight:
        lost = f"{in_flight} requests still unanswered after {DRAIN_SECONDS:.0f} s were abandoned"
    else:
        lost = "every answer received is cached"
    return (
        f"interrupted by {signum.name}: no request was sent after it; {lost}; nothing was published. "
        "Run the same command again to resume from the cache and the staged parts"
    )


def stop_temporary_prefect_server() -> None:
    """Stop the local Prefect server this process started (none when PREFECT_API_URL names one)."""
    module = sys.modules.get("prefect.server.api.server")
    if module is None:
        return
    for server in list(module.SubprocessASGIServer._instances.values()):
        process = server.server_process
        if process is None or process.poll() is not None:
            continue
        process.terminate()
        try:
            process.wait(SERVER_STOP_SECONDS)
        except subprocess.TimeoutExpired:  # it did not stop in time
            process.kill()
            process.wait()
