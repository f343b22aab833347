"""httpx's connection pool, built in a thread so that a run's first request does not wait for it.

Building it loads the CA certificates into a TLS context: tens of milliseconds (more where
SSL_CERT_FILE or SSL_CERT_DIR name the system's store), in C with the interpreter released.
Before its first request a run checks its input, opens the cache and reads and chunks its first
rows; the certificates load alongside that instead of ahead of it.
"""

from __future__ import annotations

import httpx2
from openai._constants import DEFAULT_CONNECTION_LIMITS

from pipeline.concurrency import in_background
from pipeline.errors import ProviderError


class BackgroundTransport(httpx2.BaseTransport):
    """`httpx2.HTTPTransport` with the openai client's connection limits, built in a thread
    from construction on; the first request waits for it if it is not ready yet."""

    def __init__(self):
        self._built = in_background(httpx2.HTTPTransport, limits=DEFAULT_CONNECTION_LIMITS)

    def ready(self) -> httpx2.HTTPTransport:
        """The transport, once built. A failure to build it (a certificate file that cannot be
        read) is a setting to fix, not a connection to retry: a `ProviderError` that says so."""
        try:
            return self._built.result()
        except Exception as exc:
            raise ProviderError(f"cannot set up HTTPS: {type(exc).__name__}: {exc}; check SSL_CERT_FILE and SSL_CERT_DIR") from None

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        return self.ready().handle_request(request)

    def close(self) -> None:
        if self._built.exception() is None:  # waits for a build still running, so nothing is left open
            self._built.result().close()
