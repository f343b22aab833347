"""httpx's connection pools, built in threads so that a run's first request does not wait for them.

A pool for https builds a TLS context, which loads the CA certificates: tens of milliseconds
(more where SSL_CERT_FILE or SSL_CERT_DIR name the system's store), in C with the interpreter
released. Before its first request a run checks its input, opens the cache and reads and chunks
its first rows; the certificates load alongside that instead of ahead of it. A server on plain
http (a model served on the local network) gets a pool that loads none: certificates are only
loaded if it redirects to https.
"""

from __future__ import annotations

import ssl
import threading
from concurrent.futures import Future

import httpx2

from pipeline.concurrency import in_background
from pipeline.errors import ProviderError


class BackgroundTransport(httpx2.BaseTransport):
    """One `httpx2.HTTPTransport` per URL scheme, with the openai client's connection limits,
    each built in a thread from `prepare` (or its first request) on; a request waits for its
    scheme's pool if it is not ready yet."""

    def __init__(self) -> None:
        self._pools: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._closed = False

    def prepare(self, scheme: str) -> Future:
        """Start building the pool for `scheme` ("http" or "https") unless already started."""
        scheme = "http" if scheme == "http" else "https"
        with self._lock:
            if self._closed:
                raise ProviderError("the connections were closed: no request leaves after it")
            if scheme not in self._pools:
                from openai._constants import DEFAULT_CONNECTION_LIMITS  # imported with the client that uses this

                # http's pool never opens TLS; a context that trusts no certificate makes sure
                tls = {"verify": ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)} if scheme == "http" else {}
                self._pools[scheme] = in_background(httpx2.HTTPTransport, limits=DEFAULT_CONNECTION_LIMITS, **tls)
            return self._pools[scheme]

    def ready(self, scheme: str) -> httpx2.HTTPTransport:
        """The pool for `scheme`, once built. A failure to build it (a certificate file that
        cannot be read) is a setting to fix, not a connection to retry: a `ProviderError`."""
        pool = self.prepare(scheme)  # a closed transport says so, not as a setting to fix
        try:
            return pool.result()
        except Exception as exc:  # noqa: BLE001  whatever building it raised is a setting to fix
            raise ProviderError(
                f"cannot set up HTTPS: {type(exc).__name__}: {exc}; check SSL_CERT_FILE and SSL_CERT_DIR"
            ) from None

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        return self.ready(request.url.scheme).handle_request(request)

    def close(self) -> None:
        with self._lock:
            pools, self._closed = list(self._pools.values()), True
        for pool in pools:
            if pool.exception() is None:  # waits for a build still running, so nothing is left open
                pool.result().close()
