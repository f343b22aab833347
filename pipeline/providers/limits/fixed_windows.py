"""Servers that reset a counter at fixed times, told apart from those that refill continuously.

A token bucket refills continuously: what it reports left, in seconds of the limit, plus the
seconds until it is full again is the same sum at every answer (its bank). A fixed window is a
counter reset every `period` seconds: the same sum runs from twice the period, just after a
reset, down to nothing at the end of a window that was spent. Once one budget's sums spread by
more than half the largest (and a unit), it is taken for fixed windows: `TokenBucket` then
refills it only at the resets, so each window is spent as it opens and none is sent into a
window already spent (a continuous mirror met 429s there, and paced through the last window
what it could have sent at once).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from pipeline.providers.limits.headers import implied_seconds, server_limit, until_reset
from pipeline.providers.limits.token_bucket import TokenBucket

SPREAD = 0.5  # of the largest sum, past which the sums cannot be a bucket's: its differ by rounding only


@dataclass
class ResetSums:
    """The sums (seconds left plus seconds until full) one budget's answers showed, and the longest
    wait for a reset: the period of fixed windows is at least that."""

    lowest: float = math.inf
    highest: float = 0.0
    longest_reset: float = 0.0

    def add(self, implied: float, until_full: float, unit: float) -> bool:
        """Add one answer's sum and seconds until full (`unit`: the seconds one unit of the
        budget refills in, the rounding of a whole count); whether the sums show fixed windows."""
        self.lowest, self.highest = min(self.lowest, implied), max(self.highest, implied)
        self.longest_reset = max(self.longest_reset, until_full)
        return self.highest - self.lowest > SPREAD * self.highest + unit


def follow_resets(
    bucket: TokenBucket, sums: ResetSums, headers: Mapping[str, str], name: str, sent_at: float, window: float
) -> bool:
    """Add an answer's headers for budget `name` (its request left at `sent_at`) to `sums`; once
    they show fixed windows, have `bucket` refill only at the resets, the next one told by each
    answer, every `window` seconds (the window learned) or the longest wait told, if longer.
    Returns whether this answer was the one that showed them."""
    implied, until_full, limit = implied_seconds(headers, name), until_reset(headers, name), server_limit(headers, name)
    if implied is None or until_full is None or limit is None or bucket.rate is None:
        return False
    if not sums.add(implied, until_full, 60 / limit) and bucket.period is None:
        return False
    first = bucket.period is None
    bucket.resets_every(max(window, sums.longest_reset), sent_at + until_full)
    return first


def of_a_window_gone(bucket: TokenBucket, sent_at: float, headers: Mapping[str, str], name: str) -> bool:
    """Whether an answer to a request that left at `sent_at` speaks of a fixed window already
    reset: the reset it was told of is not the bucket's next one."""
    until_full = until_reset(headers, name)
    period = bucket.period or 0.0
    return until_full is not None and sent_at + until_full < bucket.reset_at - period / 2
