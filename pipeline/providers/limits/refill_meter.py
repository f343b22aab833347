"""The rate a bucket server refills at, measured from what it reports left, for a server that
does not say its limit.

A server that says only what is left (Azure OpenAI) may lower its limit without a word, and
raise it again. Between two of its answers, what it reports left changes by what it refilled
less what it charged the requests that reached it in between. Once every request sent in
between has been answered, their charges are known: the refill over the span, ÷ its length, is
the server's rate. A bucket that was full for part of the span refilled less than its rate
(the rest was lost), so a measure is a lower bound: always safe to raise a limit to, and where
the server just refused a request (its bucket was short, not full), close to the rate. The
refusal's wait tells it sooner: a bucket asks for what was short ÷ its refill.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import NamedTuple

SPAN = 3.0  # seconds of answers, by when their requests left, that one measure covers
SHORTEST = 1.0  # a shorter span's measure is the noise of when requests reached the server
KEEP = 2 * SPAN  # seconds of reports kept behind the latest
LOWERED = 0.9  # of the limit: a refusal where the server refilled less shows it lowered, not noise
FOLLOWED_AT = 0.97  # of a lowered rate measured: what we spend, short of it by a measure's noise
RAISED = 1.1  # of a lowered limit followed: a measure above shows it raised again
RESTORED = 0.9  # of the limit the config or headers give: a measure above it restores that limit
WAIT_SLACK = 0.05  # seconds a 429's wait may run past its refill: the server's rounding, the answer's trip
AGREED = 0.1  # apart, of the larger: two refusals' waits that tell rates this close tell a bucket's refill


@dataclass(frozen=True, order=True)
class Report:
    """An answer to a request that left at `sent_at`: the server said `left` remained after
    charging it `charged` (0 for a refusal)."""

    sent_at: float
    left: float
    charged: float


class Refusal(NamedTuple):
    """A 429 for one budget: the units it was `short`, and the seconds it asked us to `wait`."""

    short: float
    wait: float | None


class RefillMeter:
    """The reports of one budget, in the order their requests left, and the refill they show."""

    def __init__(self) -> None:
        self._reports: list[Report] = []
        self.shown: float | None = None  # a limit a minute the measures showed, below the one known otherwise
        self._lowered_at = -math.inf  # `shown` was last lowered for answers to requests that left before this
        self._last_told: tuple[float, float] | None = None  # (answered before, a minute) of the last refusal's wait

    def follow(self, answered_before: float, limit: float, window: float, refusal: Refusal | None = None) -> bool:
        """Measure the rate as of `answered_before`, and follow it where it shows the server's
        limit other than `limit` (a minute, as the config or headers give it): lowered at a
        `refusal` of this budget, or raised again, where the server refilled faster or banked more
        than `window` seconds of the limit followed. Returns whether `shown` changed."""
        before = self.shown
        if refusal is not None:
            self._lower(answered_before, limit, refusal)
            self._lowered_at = answered_before if self.shown != before else self._lowered_at
        elif self.shown is not None:
            self._raise(answered_before, limit, window)
        return self.shown != before

    def _lower(self, answered_before: float, limit: float, refusal: Refusal) -> None:
        # A change under way shows in the latest second before it outweighs the span.
        measures = [60 * rate for rate in self._measures(answered_before)]
        followed, (short, wait) = self.shown or limit, refusal
        # A bucket asks for the time its refill takes to cover what was short: at half the limit followed at
        # the slowest, as we lower by half at most. Longer is no such bucket's wait (a fixed window's reset).
        if wait is None or wait > short / (followed / 60 / 2) + WAIT_SLACK:
            return
        by_wait = 60 * short / wait if wait > 0 else math.inf
        told = self._told(answered_before, by_wait, followed)
        # two waits agree, or refused at the rate followed (its margin was too thin): the lowest of what shows
        if told or self.shown is not None and measures:
            self.shown = max(min(*measures, *told, self.shown or math.inf) * FOLLOWED_AT, followed / 2)
        elif measures and max(measures) < LOWERED * limit:  # both spans short, not a second's noise: lowered
            self.shown = max(min(*measures, by_wait) * FOLLOWED_AT, followed / 2)  # to where, the wait may tell sooner

    def _told(self, answered_before: float, rate: float, followed: float) -> list[float]:
        """The rate a minute the waits of this refusal and the last tell, where they agree and are
        below the limit `followed`. The measures come a second of answers after a change, and
        each request meanwhile is refused; a wait tells it at once, but one wait alone may be a
        fixed window's reset that happens to fit a bucket, or a few units short counted otherwise
        by the server. Two that tell the same rate are a bucket's refill."""
        last, self._last_told = self._last_told, (answered_before, rate)
        if last is None or answered_before - last[0] > SPAN or abs(rate - last[1]) > AGREED * max(rate, last[1]):
            return []
        told = max(rate, last[1])
        return [told] if told < LOWERED * followed else []

    def _raise(self, answered_before: float, limit: float, window: float) -> None:
        # Only what the server refilled since we lowered the limit: a span from before averages in the rate it fell
        # from. Each span's measure is a lower bound, the latest second's the nearest to a rate just raised.
        rates = self._measures(answered_before, since=self._lowered_at)
        # A bucket fuller than `window` seconds of the limit followed holds a higher one (one it refilled to).
        held = max((r.left + r.charged for r in self._reports if r.sent_at >= self._lowered_at), default=0.0)
        measured = 60 * max([*rates, held / window])
        if measured > RAISED * (self.shown or limit):
            self.shown = None if measured >= RESTORED * limit else measured

    def _measures(self, answered_before: float, since: float = -math.inf) -> list[float]:
        """The rates over the last `SPAN` and the last `SHORTEST` seconds, where there are answers enough."""
        rates = (self.rate(answered_before, span, since) for span in (SPAN, SHORTEST))
        return [rate for rate in rates if rate is not None]

    def add(self, sent_at: float, left: float, charged: float) -> None:
        """Keep one answer's report (they come back in any order)."""
        bisect.insort(self._reports, Report(sent_at, left, charged))
        latest = self._reports[-1].sent_at
        if self._reports[0].sent_at < latest - 2 * KEEP:  # dropped in bulk, not one at each add
            del self._reports[: bisect.bisect_left(self._reports, Report(latest - KEEP, -math.inf, 0.0))]

    def rate(self, answered_before: float, span: float = SPAN, since: float = -math.inf) -> float | None:
        """Units a second the server refilled over the last `span` seconds (or a little more) of
        requests that left before `answered_before` (every one of them answered), and not before
        `since`, or None where those span under `SHORTEST`."""
        end = bisect.bisect_left(self._reports, Report(answered_before, -math.inf, 0.0))
        if end == 0:
            return None
        last = self._reports[end - 1]
        # from the latest report at least `span` before the last: answers may be sparse
        first = max(0, bisect.bisect_right(self._reports, Report(last.sent_at - span, math.inf, 0.0), hi=end) - 1)
        first = max(first, bisect.bisect_left(self._reports, Report(since, -math.inf, 0.0), hi=end - 1))
        start = self._reports[first]
        if last.sent_at - start.sent_at < SHORTEST:
            return None
        charged = sum(report.charged for report in self._reports[first + 1 : end])
        return max(0.0, last.left - start.left + charged) / (last.sent_at - start.sent_at)
