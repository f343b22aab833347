"""The books a cluster's coordinator keeps (`pipeline.run.coordinator`), as plain data on a clock
the caller passes: claims on texts being embedded, and each worker's share of the rate limit.

Claims (`ClaimBook`) follow the local cache's rules: a key is held by one owner until it is
let go, its worker leaves the cluster, or it lapses. Shares (`ShareBook`) follow demand: a
worker whose last ask said it drew budget lately (the worker's window: a second) is active, and
the active workers split the limit evenly. A share is raised only out of what the others are
not holding, and a worker learns of a cut only when it next asks (twice a second): so a worker
that becomes active gets its fair share once the others have been told to give it up, and the
shares held never add up to more than the whole limit (but for `LEAST_SHARE` per worker that
joins while the others hold everything).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

LEAST_SHARE = 0.01  # what an idle worker keeps: enough to send the request that says it wants more
SILENT_SECONDS = 10.0  # a worker that has not asked for this long holds nothing (its process hangs)
PRUNE_SECONDS = 60.0  # how often lapsed claims are swept out


def member_name(worker: str, run: str) -> str:
    """A run's name in a budget's `ShareBook`: the address of its worker process, then the run."""
    return f"{worker}#{run}"


@dataclass(frozen=True)
class Claim:
    owner: str
    worker: str
    until: float


@dataclass
class ClaimBook:
    """Keys (digests of texts) held by owners, each in a worker process of the cluster."""

    holders: dict[str, Claim] = field(default_factory=dict)
    granted: int = 0  # claims given, ever
    pruned_at: float = -math.inf

    def claim(self, keys: list[str], owner: str, worker: str, seconds: float, now: float) -> list[int]:
        """Claim `keys` for `owner` (in `worker`) for `seconds`: the positions of those it now
        holds. A key anyone holds, `owner` included, is left out, as the local cache does."""
        self._prune(now)
        held = []
        for position, key in enumerate(keys):
            claim = self.holders.get(key)
            if claim is None or claim.until <= now:
                self.holders[key] = Claim(owner, worker, now + seconds)
                held.append(position)
        self.granted += len(held)
        return held

    def release(self, keys: list[str], owner: str) -> None:
        """Let go of `owner`'s claims on `keys`; others' are kept."""
        for key in keys:
            claim = self.holders.get(key)
            if claim is not None and claim.owner == owner:
                del self.holders[key]

    def claimed(self, keys: list[str], now: float) -> list[int]:
        """The positions of the `keys` someone holds now."""
        return [i for i, key in enumerate(keys) if (claim := self.holders.get(key)) is not None and claim.until > now]

    def drop_worker(self, worker: str) -> int:
        """Let go of every claim of a worker that left the cluster; how many there were."""
        gone = [key for key, claim in self.holders.items() if claim.worker == worker]
        for key in gone:
            del self.holders[key]
        return len(gone)

    def _prune(self, now: float) -> None:
        if now - self.pruned_at < PRUNE_SECONDS:
            return
        self.pruned_at = now
        for key in [key for key, claim in self.holders.items() if claim.until <= now]:
            del self.holders[key]


@dataclass
class ShareBook:
    """The shares of one rate limit (one run's key) that the cluster's workers hold."""

    told: dict[str, float] = field(default_factory=dict)  # worker -> the share it was last told
    asked_at: dict[str, float] = field(default_factory=dict)  # worker -> when it last asked
    wanting: dict[str, bool] = field(default_factory=dict)  # worker -> whether its last ask said it drew budget

    def share(self, worker: str, wanted: bool, now: float) -> float:
        """`worker`'s share of the limit, asked at `now`, saying whether it drew budget lately."""
        self._forget_silent(now)
        self.asked_at[worker], self.wanting[worker] = now, wanted
        fair = self.fair_share(worker)
        held = self.told.get(worker, 0.0)
        free = 1.0 - sum(share for other, share in self.told.items() if other != worker)
        share = fair if fair <= held else max(held, min(fair, free))
        self.told[worker] = max(LEAST_SHARE, share)
        return self.told[worker]

    def fair_share(self, worker: str) -> float:
        """What `worker` should hold once every worker has asked again: the active ones split what
        the idle ones leave evenly."""
        active = [w for w, wanted in self.wanting.items() if wanted]
        if worker not in active:
            return LEAST_SHARE
        idle = len(self.asked_at) - len(active)
        return (1.0 - LEAST_SHARE * idle) / len(active)

    def members_of(self, worker: str) -> list[str]:
        """The runs of worker process `worker` that hold a share here (`member_name`)."""
        return [member for member in self.asked_at if member.split("#", 1)[0] == worker]

    def drop_worker(self, worker: str) -> None:
        """`worker` left (or stopped embedding): its share is free for the others at their next ask."""
        for book in (self.told, self.asked_at, self.wanting):
            book.pop(worker, None)

    def _forget_silent(self, now: float) -> None:
        for worker in [w for w, at in self.asked_at.items() if now - at > SILENT_SECONDS]:
            self.drop_worker(worker)
