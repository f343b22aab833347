"""A coordinator on the Dask scheduler: claims on texts across hosts, and the rate limit shared
by the workers that want it (the books are `pipeline.run.coordination`'s).

The flow registers `Coordinator` on the cluster; each worker process reaches it over the comm
it already keeps open to the scheduler (`CoordinatorLink`), by handlers the plugin adds. One
call is one round trip of about 0.3 ms on one machine, whatever the number of keys it carries
(`distributed.Variable.get`, one key a call, is as slow, and a `Lock` or `Semaphore` a text
would be a round trip per text): so claims go in bulk, a call per batch of texts.

The rate limit is shared by shares, not by leases of budget: each worker keeps its own token
buckets and learned window (the server's headers, scaled by its share), and asks for its share
twice a second from `SharePoller`, saying whether it drew budget in the last second. No request waits
on a round trip; a lease per request (or per handful) would add one to the wait of every
request that finds its worker's lease spent, and the buckets would still be needed to pace
within a lease. A worker that dies or leaves loses its claims and its share at once
(`remove_worker`); the others' shares grow at their next ask.

Importing this module imports `distributed`: only the Dask path does.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils import sync

from pipeline.config import first_line
from pipeline.errors import EmbedpipeError
from pipeline.run.coordination import ClaimBook, ShareBook

log = logging.getLogger("embedpipe")
PREFIX = "embedpipe_"  # of the scheduler handlers this plugin adds
SHARE_POLL_SECONDS = 0.5  # how often a worker asks for its share
WANT_SECONDS = 1.0  # a worker that drew budget this recently says it wants it: a gap between batches is no exit
CALL_TIMEOUT = 30.0  # seconds a call to the scheduler may take before the worker gives up on it


class Coordinator(SchedulerPlugin):
    """The scheduler's books of claims and shares, kept for every run on the cluster."""

    # Versioned: a long-lived scheduler holding an older embedpipe's coordinator gets this one
    # beside it (`idempotent` would keep the old one, lacking calls this version makes).
    name = "embedpipe-coordinator-2"
    idempotent = True  # a second run's registration keeps the books of the first

    def __init__(self) -> None:
        self.claims = ClaimBook()
        self.shares: dict[str, ShareBook] = {}  # by budget (a key at an endpoint): every run on it draws from one
        self.clock: Callable[[], float] = time.monotonic

    async def start(self, scheduler: Any) -> None:
        for name in ("claim", "release", "claimed", "share", "leave"):
            scheduler.handlers[PREFIX + name] = getattr(self, name)

    def claim(self, keys: list[str], owner: str, worker: str, seconds: float) -> list[int]:
        return self.claims.claim(keys, owner, worker, seconds, self.clock())

    def release(self, keys: list[str], owner: str) -> None:
        self.claims.release(keys, owner)

    def claimed(self, keys: list[str]) -> list[int]:
        return self.claims.claimed(keys, self.clock())

    def share(self, pool: str, worker: str, wanted: bool) -> float:
        return self.shares.setdefault(pool, ShareBook()).share(worker, wanted, self.clock())

    def leave(self, pool: str, worker: str) -> None:
        if pool in self.shares:
            self.shares[pool].drop_worker(worker)
            if not self.shares[pool].told:  # the run ended on every worker: its book goes
                del self.shares[pool]

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        """A worker left the cluster (or died): its claims go now, its shares are free."""
        released = self.claims.drop_worker(worker)
        for pool, book in list(self.shares.items()):
            for member in book.members_of(worker):
                self.leave(pool, member)
        if released:
            log.info("worker %s left: %d claims on texts released", worker, released)


class CoordinatorGone(EmbedpipeError):
    """A call to the coordinator failed: the scheduler is gone or unreachable."""


class CoordinatorLink:
    """This worker process's line to the coordinator: blocking calls from a task's thread."""

    def __init__(self, worker: Any):
        self.worker = worker
        self.address: str = worker.address

    @classmethod
    def here(cls) -> CoordinatorLink | None:
        """The link of the Dask worker running this task; None outside one."""
        from distributed import get_worker

        try:
            return cls(get_worker())
        except ValueError:
            return None

    def call(self, name: str, **kwargs: Any) -> Any:
        """The coordinator's answer to `name`. The scheduler gone (the run is being shut down, the
        scheduler died) is one line, not a traceback from the comm."""
        handler = getattr(self.worker.scheduler, PREFIX + name)
        try:
            return sync(self.worker.loop, handler, callback_timeout=CALL_TIMEOUT, **kwargs)
        except (OSError, RuntimeError) as exc:  # CommClosedError, a timeout, a closed event loop
            raise CoordinatorGone(f"the Dask scheduler's coordinator cannot be reached ({first_line(exc)})") from None


class CoordinatedClaims:
    """Claims on texts kept by the coordinator, with the interface `Claims` uses of the local
    cache (`claim_many`, `release_many`, `claimed`). Texts travel as digests under the cache's
    namespace, not as the cache's keys: a key's form depends on each host's cache."""

    def __init__(self, link: CoordinatorLink, namespace: str):
        self.link, self.prefix = link, f"{namespace}\n".encode()

    def keys(self, texts: list[str]) -> list[str]:
        return [hashlib.sha256(self.prefix + text.encode()).hexdigest()[:32] for text in texts]

    def claim_many(self, texts: list[str], owner: str, seconds: float) -> list[str]:
        """Of `texts`, those `owner` now holds for up to `seconds`; those anyone holds are left out."""
        held = self.link.call("claim", keys=self.keys(texts), owner=owner, worker=self.link.address, seconds=seconds)
        return [texts[i] for i in held]

    def release_many(self, texts: list[str], owner: str) -> None:
        """Let go of `owner`'s claims on `texts`."""
        self.link.call("release", keys=self.keys(texts), owner=owner)

    def claimed(self, texts: list[str]) -> set[str]:
        """Those of `texts` someone holds now."""
        return {texts[i] for i in self.link.call("claimed", keys=self.keys(texts))}


class SharePoller:
    """Keeps an embedder's rate-limit share at what the coordinator says, asking twice a second,
    saying whether its embedder drew budget lately (`wants`), and applying the answer (`apply`)."""

    def __init__(
        self,
        link: CoordinatorLink,
        pool: str,
        member: str,
        wants: Callable[[float], bool],
        apply: Callable[[float], None],
        share: float,
    ) -> None:
        self.link, self.pool, self.member, self.wants, self.apply = link, pool, member, wants, apply
        self.share = share  # kept while the coordinator cannot be asked
        self._stop = threading.Event()
        self.share = self._ask(wanted=True)  # before the first request: it is about to draw
        self._thread = threading.Thread(target=self._run, name=f"embedpipe-share-{pool[:8]}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SHARE_POLL_SECONDS):
            self.share = self._ask(self.wants(WANT_SECONDS))

    def _ask(self, wanted: bool) -> float:
        try:
            share = float(self.link.call("share", pool=self.pool, worker=self.member, wanted=wanted))
        except CoordinatorGone as exc:  # the scheduler is briefly unreachable: keep the share we hold
            log.debug("asking the coordinator for a share failed: %s", exc)
            return self.share
        self.apply(share)
        return share

    def close(self) -> None:
        """Stop asking, and give the share back (once no ask is under way: one after would take it again)."""
        self._stop.set()
        self._thread.join(CALL_TIMEOUT)
        try:
            self.link.call("leave", pool=self.pool, worker=self.member)
        except CoordinatorGone as exc:  # the cluster is shutting down: the scheduler drops us anyway
            log.debug("giving the share back failed: %s", exc)
