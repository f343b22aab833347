"""Client-side rate limits that spend the whole per-minute budget and no more.

The API meters requests and tokens per minute with buckets that refill continuously. A
`TokenBucket` mirrors one of them. Callers reserve their amount at once — the level may go
negative — and wait until the refill has covered everything reserved up to and including
theirs: first come, first served, so a large request is never starved by small ones, and the
long-run rate is exactly the budget. A waiting caller asks again when it wakes, so a budget
lowered meanwhile (a 429, a server header) delays the whole queue in step instead of releasing
it at once. `stop` wakes the queue for good: after an answer no retry can fix, nobody sends.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Callable, Mapping

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_SECONDS_PER = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


class Stopped(Exception):
    """`RateLimiter.stop` was called while this caller waited, or before it came."""


class TokenBucket:
    """`per_minute` units a minute, banked up to one minute's worth, refilled continuously."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity  # an idle key starts with its minute banked, as the API's does
        self.refill_delay = 0.0  # seconds a full bucket waits, once spent from, before refilling
        self.reserved = 0.0  # everything ever reserved: a caller's place in line
        self.waiting = 0.0  # reserved by callers still waiting to send
        self.reserved_when_full: float | None = None  # `reserved` when last full, until a request is sent
        self._clock = clock
        self._updated = clock()
        self._lock = threading.Lock()

    def reserve(self, amount: float) -> float:
        """Deduct `amount` now; return its place in line: `wait` tells when it is covered."""
        amount = min(amount, self.capacity)  # a request larger than a minute's budget waits for one minute's
        with self._lock:
            self._refill()
            if self.level >= self.capacity:  # the server's bucket starts refilling when this request arrives
                self._updated += self.refill_delay
                self.reserved_when_full = self.reserved
            self.level -= amount
            self.reserved += amount
            self.waiting += amount
            return self.reserved

    def wait(self, place: float) -> float:
        """Seconds until the refill covers everything reserved up to `place`, as of now."""
        with self._lock:
            now = self._refill()
            short = place - self.reserved - self.level
            return short / self.rate + max(0.0, self._updated - now) if short > 1e-6 else 0.0  # not float dust

    def sent(self) -> None:
        """A request has been written to the server in full. The server's bucket, full until
        it charges the first request, refills nothing before then: whatever ours refilled
        between being spent from full and this first send (a new connection, a TLS handshake,
        a transport still being built) is taken back. Without a call, the refill runs from
        the count."""
        with self._lock:
            if self.reserved_when_full is not None:
                self._refill()
                self.level = min(self.level, self.capacity - (self.reserved - self.reserved_when_full))
                self.reserved_when_full = None

    def release(self, amount: float) -> None:
        """A caller that reserved `amount` has stopped waiting (its request is leaving)."""
        with self._lock:
            self.waiting -= min(amount, self.capacity)

    def adjust(self, amount: float) -> None:
        """Charge (positive) or refund (negative) a difference found after the fact."""
        with self._lock:
            self._refill()
            self.level = min(self.capacity, self.level - amount)

    def cap(self, remaining: float, since: float | None = None) -> None:
        """The server said only `remaining` was left, at some moment after `since` (when the
        request left; default now): never believe we have more than that plus the refill since,
        less what callers still waiting have reserved (the server has not seen it yet)."""
        with self._lock:
            now = self._refill()
            refilled = (now - since) * self.rate if since is not None else 0.0
            self.level = min(self.level, remaining + max(0.0, refilled) - self.waiting)

    def _refill(self) -> float:
        now = self._clock()
        self.level = min(self.capacity, self.level + max(0.0, now - self._updated) * self.rate)
        self._updated = max(now, self._updated)  # later than now while a refill delay runs
        return now


class RateLimiter:
    """Requests-per-minute and tokens-per-minute budgets, kept together.

    Call `acquire` as the request goes on the wire (the openai provider does it from httpx's
    request hook, after the client has built the request), and `sent` once it is written: the
    server's budget starts refilling when it charges the first request, and ours from the
    moment that request could reach it, not before (a new connection, a TLS handshake). A
    request that had to wait leaves `transit_margin` seconds after its budget is back, for the
    rest: one request's trip from the wire to its charge may take longer than another's. The
    shift is the same for every waiting request, so it costs latency once, not throughput.
    """

    def __init__(
        self,
        requests_per_minute: float,
        tokens_per_minute: float,
        sleep: Callable[[float], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        transit_margin: float = 0.01,
    ):
        self.requests = TokenBucket(requests_per_minute, clock)
        self.tokens = TokenBucket(tokens_per_minute, clock)
        self.transit_margin = transit_margin
        self._stopped = threading.Event()
        self._sleep = sleep or self._stopped.wait  # by default a sleep that `stop` cuts short
        self._clock = clock
        self._hold_until = 0.0  # set by back_off; also stops requests already waiting

    def delay_refill(self, seconds: float) -> None:
        """Start refilling `seconds` late each time a full bucket is first spent from: for a
        client whose first requests reach the server well after they were counted."""
        self.requests.refill_delay = self.tokens.refill_delay = seconds

    def acquire(self, tokens: int) -> float:
        """Block until one request of `tokens` tokens fits both budgets; return the clock then.
        Raises `Stopped` once `stop` was called."""
        places = self.requests.reserve(1), self.tokens.reserve(tokens)
        try:
            while not self.stopped and (wait := self._wait(places)) > 0:
                self._sleep(wait)
        finally:
            self.requests.release(1)
            self.tokens.release(tokens)
        if self.stopped:
            raise Stopped("the rate limiter was stopped: no request leaves")
        return self._clock()

    def sent(self) -> None:
        """A request is on the wire: the buckets start refilling if they waited for one."""
        self.requests.sent()
        self.tokens.sent()

    def sleep(self, seconds: float) -> None:
        """Sleep `seconds` (a retry's backoff), or until `stop`."""
        if not self.stopped:
            self._sleep(seconds)

    def stop(self) -> None:
        """Wake every caller waiting in `acquire` or `sleep`: from now on `acquire` raises
        `Stopped` instead of letting a request leave. For an answer that no retry can fix,
        and for closing."""
        self._stopped.set()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def _wait(self, places: tuple[float, float]) -> float:
        budget = max(self.requests.wait(places[0]), self.tokens.wait(places[1]))
        held = self._hold_until - self._clock()  # a 429 arrived while we waited
        return max(budget + self.transit_margin if budget > 0 else 0.0, held)

    def refund(self, tokens: int) -> None:
        """Give back a request the server refused without charging (a 429)."""
        self.requests.adjust(-1)
        self.tokens.adjust(-tokens)

    def observe(self, headers: Mapping[str, str], estimated_tokens: int, used_tokens: int | None, sent_at: float | None = None) -> None:
        """Correct from the server's `x-ratelimit-*` headers and the response's usage.

        The headers may date from when the server took the request, not from when its answer
        arrived (`sent_at` is when it left): taking them as current would throw away the
        refill during the request's latency, once per request that finds our bucket above zero.
        """
        for bucket, name in ((self.requests, "requests"), (self.tokens, "tokens")):
            remaining = server_level(headers, name)
            if remaining is not None:
                bucket.cap(remaining, sent_at)
        if used_tokens is not None and used_tokens != estimated_tokens:
            self.tokens.adjust(used_tokens - estimated_tokens)

    def back_off(self, seconds: float, tokens: int) -> None:
        """A 429 said a refused (and refunded) request of `tokens` tokens fits in `seconds`:
        nobody sends before then, and the budgets hold no more than makes that true for the
        first in line, with the others still waiting queued behind it at the budgeted pace
        (not all released together when the hold ends, to meet the next 429). They are lowered,
        not emptied: an empty bucket would make the retry wait again for its own tokens."""
        self.requests.cap(1 - seconds * self.requests.rate)
        self.tokens.cap(tokens - seconds * self.tokens.rate)
        self._hold_until = max(self._hold_until, self._clock() + seconds)


def server_level(headers: Mapping[str, str], name: str) -> float | None:
    """What the server says is left of budget `name` ("requests" or "tokens"), or None.

    `x-ratelimit-remaining-*` counts whole units, and at a few hundred requests a minute a
    unit is a fifth of a second: taking the whole number as the level would keep our bucket
    up to a unit below the server's for the rest of the run. Where the limit and the time
    until the budget is full again (`x-ratelimit-reset-*`) come too, they give the fraction;
    a reset that disagrees with the whole count by more than a unit (a server that means
    something else by it) is ignored.
    """
    remaining = _number(headers.get(f"x-ratelimit-remaining-{name}"))
    limit = _number(headers.get(f"x-ratelimit-limit-{name}"))
    until_full = _duration(headers.get(f"x-ratelimit-reset-{name}"))
    if remaining is None or not limit or until_full is None:
        return remaining
    level = limit - until_full * limit / 60
    return level if abs(level - remaining) <= 1 else remaining


def _duration(value: str | None) -> float | None:
    """Seconds in a duration as the API writes them ("6m0s", "1.5s", "20ms"), or None."""
    parts = _DURATION_PART.findall(value or "")
    if not parts or "".join(number + unit for number, unit in parts) != (value or "").strip():
        return None
    return sum(float(number) * _SECONDS_PER[unit] for number, unit in parts)


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
