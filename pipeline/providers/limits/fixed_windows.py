"""Servers that reset a counter at fixed times, told apart from those that refill continuously.

A token bucket refills continuously: what it reports left, in seconds of the limit, plus the
seconds until it is full again is the same sum at every answer (its bank). A fixed window is a
counter reset every `period` seconds: the same sum runs from twice the period, just after a
reset, down to nothing at the end of a window that was spent. Once one budget's sums spread by
more than half the largest (and a unit), it is taken for fixed windows: `TokenBucket` then
refills it only at the resets, so each window is spent as it opens and none is sent into a
window already spent (a continuous mirror met 429s there, and paced through the last window
what it could have sent at once).

A server that says only what is left (Azure OpenAI: no `x-ratelimit-reset-*`) gives no sums. Its
resets show as jumps instead (`LevelJumps`): a report of more left than an earlier one plus what
a bucket refilled at the limit since could hold. Charges only ever lower the level, so that
bound holds whatever order the server counted the requests in; a jump needs a reset (or a server
that refills faster than the limit we hold to, which steps at our limit then spend no faster).
A 429 from such a server tells when its next reset is, the wait it asks for, and gives it away
first where that wait is longer than a bucket refilling at the limit could ask of the request (by
half a window: such a bucket would be slower than half our limit). Two waits told in different
windows correct the period learned.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from pipeline.providers.limits.headers import implied_seconds, server_limit, until_reset
from pipeline.providers.limits.token_bucket import TokenBucket

SPREAD = 0.5  # of the largest sum, past which the sums cannot be a bucket's: its differ by rounding only
# of a window's budget: a level that rose by more than the refill at the limit explains. Requests of a quarter
# window paced at the limit show a reset as about 0.24 of one (at 0.25, 1 s windows went unfound in 2 runs of 3).
JUMP = 0.15


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


@dataclass
class LevelJumps:
    """One budget's reports of what is left, from a server that does not say when it is full again:
    the recent ones (when the request left, when its answer came, the level), the most it ever
    held in seconds of the limit as known (a fixed window's budget is at least that: its period
    at least that many seconds), and the last reset a 429 told exactly (when it came plus
    the wait it asked for)."""

    reports: deque = field(default_factory=deque)
    most_seconds: float = 0.0
    told: float | None = None

    def add(self, sent_at: float, answered_at: float, level: float, rate: float, budget: float) -> float | None:
        """Add a report (`rate`: units a second; `budget`: a window's). Where it shows more left than
        any report answered before its request left (so counted before it), plus `rate` since that
        one's request left, by more than `JUMP` of the budget: the earliest the reset between can be."""
        earliest = None
        for sent, answered, before in self.reports:
            if answered < sent_at and level - before - rate * (answered_at - sent) > JUMP * budget:
                earliest = sent if earliest is None else max(earliest, sent)
        self.reports.append((sent_at, answered_at, level))
        while self.reports[0][1] < answered_at - budget / rate:  # a window's reports are enough
            self.reports.popleft()
        return earliest

    def period(self, bucket: TokenBucket, window: float) -> float:
        """The bucket's period, or before it has one the least the period of fixed windows can
        be: the window learned, or the most seconds of the limit the budget held."""
        return bucket.period or max(window, self.most_seconds)


def follow_jumps(
    bucket: TokenBucket,
    jumps: LevelJumps,
    level: float,
    charged: float,
    sent_at: float,
    now: float,
    window: float,
    known_rate: float,
) -> bool:
    """Add what an answer to a request of `charged` units said is left (`level`, of this process's
    share) to `jumps`; once a level jumps, have `bucket` refill only at the resets, one of them no
    earlier than the jump allows. `window`: the window learned; `bucket.limit_rate`: the limit's
    rate (not slowed by a pace learned from refusals); `known_rate`: our share of the limit a
    second as the config and headers give it, where `bucket.limit_rate` may follow a slower refill
    measured (`RefillMeter`). Returns whether this answer was the one that showed them."""
    rate = bucket.limit_rate
    if rate is None:
        return False
    # In seconds of the limit as known, not of a slower refill measured: that measure takes the server for a
    # bucket, and a fixed window's refill is lumpy (a 1 s window halved before it was found was taken for 2-3 s).
    jumps.most_seconds = max(jumps.most_seconds, (level + charged) / known_rate)
    period = jumps.period(bucket, window)
    earliest = jumps.add(sent_at, now, level, rate, rate * period)
    if earliest is None:
        return False
    first, told = bucket.period is None, jumps.told
    if told is not None and told > now:  # the next reset, as a 429 told it
        bucket.resets_every(period, told, exact=True)
    elif told is not None:  # a reset told before: this one lies a whole number of periods after it
        reset = told + period * max(0, math.ceil((earliest - told) / period))
        bucket.resets_every(period, reset if reset <= now else earliest, exact=reset == told)
    else:
        bucket.resets_every(period, earliest)
    return first


def follow_refusal(
    bucket: TokenBucket, jumps: LevelJumps, needed: float, level: float, wait: float, now: float, window: float
) -> bool:
    """A 429 found this budget short (`level` left, `needed` asked) and asked for `wait` seconds:
    where that is a reset, the next one, and the period learned from the one told before. Returns
    whether this refusal was the one that showed fixed windows."""
    rate = bucket.limit_rate
    if rate is None or level >= needed:
        return False
    first, reset, before = bucket.period is None, now + wait, jumps.told
    jumps.told = reset  # kept before the windows are found too: a jump then says when they reset
    if first and wait <= needed / rate + window / 2:  # as a bucket at the limit could ask
        return False
    period = max(jumps.period(bucket, window), wait)
    if before is not None and (count := round((reset - before) / period)) >= 1:
        period = max(period, (reset - before) / count)  # a period learned short: its resets came early
    bucket.resets_every(period, reset, exact=True)
    return first
