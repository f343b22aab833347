"""One server budget mirrored on the client: a bucket that refills continuously.

The API meters requests and tokens with buckets that refill continuously, banked up to a
window (a whole minute at OpenAI, a second or ten elsewhere). Callers reserve their amount at
once — the level may go negative — and wait until the refill has covered everything reserved
up to and including theirs: first come, first served, so a large request is never starved by
small ones, and the long-run rate is exactly the limit. A waiting caller asks again when it
wakes, so a budget lowered meanwhile (a 429, a server header) delays the whole queue in step
instead of releasing it at once.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from pipeline.providers.limits.learned_window import MINUTE

RAISE_MARGIN = 0.1  # seconds of refill not believed when a report raises the level: the request's trip there
SHOWN_SHORT = 0.9  # of a fixed window's capacity: a window shown to hold less held a lowered limit, not rounding


class TokenBucket:
    """`per_minute` units a minute, banked up to `window` seconds' worth, refilled continuously.
    No limit (`per_minute` None) lets everything through at once."""

    def __init__(self, per_minute: float | None, clock: Callable[[], float] = time.monotonic, window: float = MINUTE):
        self.rate: float | None = None  # units a second; None: no limit known
        self.limit_rate: float | None = None  # the limit's, before a pace learned from refusals slows it
        self.capacity = self.level = math.inf
        self.refill_delay = 0.0  # seconds a full bucket waits, once spent from, before refilling
        self.reserved = 0.0  # everything ever reserved: a caller's place in line
        self.waiting = 0.0  # reserved by callers still waiting to send
        self.reserved_when_full: float | None = None  # `reserved` when last full, until a request is sent
        self.debt = 0.0  # what our sends owe a bucket refilled at `rate` that was full: see LearnedWindow
        self.period: float | None = None  # set for a server of fixed windows: seconds between its resets
        self.reset_at = math.inf  # with `period`: the server's next reset, by our clock
        self._believe_next = False  # fixed windows just found: the next report may raise the level, once
        self._held = math.inf  # fixed windows: what the window under way holds, as far as we know (its capacity)
        self._shown = 0.0  # fixed windows: the most the reports of the window under way showed it holds
        self._watched = False  # fixed windows: every report of the window under way was seen (it opened at our reset)
        self._clock = clock
        self._updated = self._debt_updated = clock()
        self._lock = threading.Lock()
        self.set_limit(per_minute, window)

    def set_limit(self, per_minute: float | None, window: float, pace: float = 1.0) -> None:
        """Follow a new limit, spent at `pace` of it and banked up to `window` seconds of that.
        An unlimited bucket given a limit starts full (the server's headers then say how full)."""
        with self._lock:
            self._refill()
            if per_minute is None:
                self.rate = self.limit_rate = None
                self.capacity = self.level = math.inf
                return
            unlimited, rate = self.rate is None, self.rate
            self.rate, self.limit_rate = per_minute * pace / 60.0, per_minute / 60.0
            self.capacity = self.rate * (self.period or window)  # a fixed window's budget is its period's
            self.level = self.capacity if unlimited else min(self.level, self.capacity)
            if rate != self.rate:  # debt met at the old rate, in the new one's terms: what is spent of the window
                self.debt = max(0.0, self.capacity - self.level - self.waiting)
                self._debt_updated = self._clock()

    def scale_level(self, ratio: float) -> None:
        """Keep `ratio` of what is banked (a smaller share of a budget others draw from too);
        a debt (a level below zero) is kept whole: it was spent."""
        with self._lock:
            self._refill()
            if self.rate is not None and self.level > 0:
                self.level *= ratio

    def reserve(self, amount: float) -> float:
        """Deduct `amount` now; return its place in line: `wait` tells when it is covered."""
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
            if self.rate is None:
                return 0.0
            short = place - self.reserved - self.level
            if short <= 1e-6:  # not float dust
                return 0.0
            if self.period is not None:  # covered at the reset that leaves room for everyone ahead of it
                ahead = place - (self.reserved - self.waiting)
                return self.reset_at - now + self.period * max(0, math.ceil(ahead / self.capacity - 1e-9) - 1)
            return short / self.rate + max(0.0, self._updated - now)

    def sent(self) -> None:
        """A request has been written to the server in full. The server's bucket, full until
        it charges the first request, refills nothing before then: whatever ours refilled
        between being spent from full and this first send (a new connection, a TLS handshake,
        a transport still being built) is taken back. Without a call, the refill runs from
        the count."""
        with self._lock:
            if self.reserved_when_full is not None and self.rate is not None:
                self._refill()
                self.level = min(self.level, self.capacity - (self.reserved - self.reserved_when_full))
            self.reserved_when_full = None

    def release(self, amount: float) -> None:
        """A caller that reserved `amount` has stopped waiting (its request is leaving)."""
        with self._lock:
            self.waiting -= amount

    def owe(self, amount: float) -> float | None:
        """A request of `amount` leaves now: its debt in seconds of the limit (None: no limit)."""
        with self._lock:
            now = self._clock()
            if self.rate is None:
                return None
            self.debt = max(0.0, self.debt - (now - self._debt_updated) * self.rate) + amount
            self._debt_updated = now
            return self.debt / self.rate

    def adjust(self, amount: float) -> None:
        """Charge (positive) or refund (negative) a difference found after the fact."""
        with self._lock:
            self._refill()
            self.level = min(self.capacity, self.level - amount)
            self.debt = max(0.0, self.debt + amount)

    def cap(
        self, remaining: float, since: float | None = None, may_raise: bool = False, place: float | None = None
    ) -> None:
        """The server said only `remaining` was left, at some moment after `since` (when the
        request left; default now): never believe we have more than that plus the refill since,
        less what callers still waiting have reserved (the server has not seen it yet).
        `may_raise`: believe that much even where it is more than we had (a share that grew).
        `place` (the answered request's, from `reserve`): where the server holds more than we
        believe (its limit rose before its headers told us; our answers came late), believe it,
        less everything reserved after that request (those may have reached it after it counted)
        and `RAISE_MARGIN` seconds of refill (the request's trip to the server). With fixed
        windows, only the first report after they were found may raise the level (a reset we did
        not foresee); from then on our own resets do, and reports only lower it: answers come
        back in another order than they were counted, and a raise would count some twice."""
        with self._lock:
            now = self._refill()
            if self.rate is None:
                return
            refilled = (now - since) * self.rate if since is not None and self.period is None else 0.0
            told = remaining + max(0.0, refilled) - self.waiting
            self.level = min(self.capacity, told) if may_raise else min(self.level, told)
            if place is not None and self.period is None:  # less what refilled on the request's way there
                believed = told + self.waiting - (self.reserved - place) - RAISE_MARGIN * self.rate
                self.level = max(self.level, min(self.capacity, believed))
            elif place is not None and self._believe_next:  # a reset found, not foreseen: once, then our own
                # Nothing refilled; callers still waiting go this window, wherever they are in line.
                believed = told + self.waiting - max(self.reserved - place, self.waiting)
                raised = max(0.0, min(self.capacity, believed) - self.level)
                # The window holds what we raised by more than we thought: a report of it later is not a limit restored.
                self.level, self._held, self._believe_next = self.level + raised, self._held + raised, False

    def resets_every(self, period: float, next_reset: float, exact: bool = False) -> None:
        """The server resets this budget every `period` seconds, one of them at `next_reset` (a
        time after which it has, by our clock: the earliest it can be): from now on it refills only
        at its resets. Each answer may put them later, never earlier, but for an `exact` one (the
        wait a 429 asked for): the next reset is then the first of its after now."""
        with self._lock:
            now = self._refill()
            if self.rate is None:
                return
            first, self.period, before = self.period is None, max(period, self.period or 0.0), self.capacity
            self.capacity = self.rate * self.period
            # A longer period found: the window under way holds that much more than we thought.
            more = 0.0 if first else self.capacity - before
            self.level = min(self.level + more, self.capacity)
            self._held = self.capacity if first else min(self._held, before) + more
            self._believe_next = self._believe_next or first  # it may have reset since we last believed it spent
            if self.reset_at == math.inf or exact:  # the first, or one told: the next reset from now
                self.reset_at = _first_after(next_reset, now, self.period)
            else:  # one of the resets we know, told again: the nearest of them
                told = next_reset - self.period * round((next_reset - self.reset_at) / self.period)
                self.reset_at = max(self.reset_at, told)

    def shown_in_window(self, remaining: float, charged: float, sent_at: float) -> None:
        """Fixed windows: an answer to a request that left at `sent_at` and was charged `charged`
        said `remaining` was left. Their sum is at most what the window holds (all of it for the
        first request the window counted), if the request left in the window under way: where it
        is more than we believed the window holds (a limit restored without a word), the rest is
        spent now; the next window starts from what this one showed."""
        with self._lock:
            self._refill()
            if self.period is None or sent_at < self.reset_at - self.period:  # left before the window under way
                return
            shown = min(self.capacity, remaining + charged)
            self._shown = max(self._shown, shown)
            if shown > self._held:
                self.level, self._held = self.level + shown - self._held, shown

    def shown_elsewhere(self, held: float) -> None:
        """Fixed windows just found, mid-window: another measure (the refill measured while we took
        the server for a bucket) showed the window under way to hold `held`. The next one opens at
        that, unless this one's reports show more: its own reports were not all seen."""
        with self._lock:
            self._refill()
            if self.period is not None:
                self._shown, self._watched = max(self._shown, held), True

    def _held_next(self, now: float, period: float) -> float:
        """What the window opening at the reset due now holds: the whole capacity, or what the
        one before showed where that was well below it (a limit lowered without a word), its
        reports were all seen (it opened at one of our resets), and no other window came between."""
        shown, watched = self._shown, self._watched and now < self.reset_at + period
        return shown if watched and 0 < shown < SHOWN_SHORT * self.capacity else self.capacity

    def _refill(self) -> float:
        now = self._clock()
        if self.rate is not None and self.period is not None:
            if now >= self.reset_at:  # what callers still waiting reserved goes into the new window
                self._held = self._held_next(now, self.period)
                self.level, self._shown, self._watched = self._held - self.waiting, 0.0, True
                self.reset_at = _first_after(self.reset_at, now, self.period)
        elif self.rate is not None:
            self.level = min(self.capacity, self.level + max(0.0, now - self._updated) * self.rate)
        self._updated = max(now, self._updated)  # later than now while a refill delay runs
        return now


def _first_after(reset: float, now: float, period: float) -> float:
    """The first of the resets `period` apart from `reset` that is later than `now` (`reset` itself if it is)."""
    return reset if reset > now else reset + period * (1 + math.floor((now - reset) / period))
