"""Client-side rate limits that spend the whole budget the server allows, and no more.

`RateLimiter` keeps a requests bucket and a tokens bucket (`TokenBucket`). Their limits are the
server's, from its `x-ratelimit-limit-*` headers, capped by the configured ones where set; with
neither known, nothing is held back but the 429s' retry-after. How much of the limit the server
banks — a minute, or a few seconds — is learned (`LearnedWindow`), as is whether it takes our
full rate. `stop` wakes every waiting caller for good: after an answer no retry can fix,
nobody sends.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pipeline.providers.limits.fixed_windows import (
    LevelJumps,
    ResetSums,
    follow_jumps,
    follow_refusal,
    follow_resets,
    of_a_window_gone,
)
from pipeline.providers.limits.headers import server_level, server_limit, until_reset
from pipeline.providers.limits.learned_window import LearnedWindow
from pipeline.providers.limits.token_bucket import TokenBucket

log = logging.getLogger("embedpipe")
NAMES = ("requests", "tokens")
FIRST_REQUEST_TOKENS = 1024  # before any limit is known: a request most servers' windows take (or one text)
SHARE_OF_WINDOW = 4  # a request carries at most a quarter of the tokens the window holds
# and at most a quarter second of the limit: latency grows with a request's size, and the last one's is the run's tail
MOST_SECONDS_A_REQUEST = 0.25
LONGEST_NAP = 0.5  # a waiting request asks again this often: a limit raised meanwhile lets it go sooner
_CAP_SETTING = {"requests": "requests_per_minute", "tokens": "tokens_per_minute"}


class Stopped(Exception):
    """`RateLimiter.stop` was called while this caller waited, or before it came."""


@dataclass(frozen=True)
class Ticket:
    """A request let through: when it left, and its debt in seconds of the limit (None: no
    limit was known), for `observe` or `refused` when its answer comes."""

    sent_at: float
    debt: float | None = None
    places: tuple[float, float] | None = None  # in the requests and tokens buckets' lines
    solo: bool = False  # no other request was on its way when it left


class RateLimiter:
    """Requests-per-minute and tokens-per-minute budgets, kept together.

    Call `acquire` as the request goes on the wire (the openai provider does it from httpx's
    request hook, after the client has built the request), and `sent` once it is written: the
    server's budget starts refilling when it charges the first request, and ours from the
    moment that request could reach it, not before. A request that had to wait leaves
    `transit_margin` seconds after its budget is back: one request's trip from the wire to its
    charge may take longer than another's. With `first_answer_first`, only one request leaves
    until the first answer tells the limits and how full the server's budget is.
    `share`: the part of the limits (the server's and the configured caps) this process may spend
    (1/N for N processes on one key); `set_share` changes it mid-run.
    """

    def __init__(
        self,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        sleep: Callable[[float], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        transit_margin: float = 0.01,
        share: float = 1.0,
        first_answer_first: bool = False,
    ):
        self.caps = {"requests": requests_per_minute, "tokens": tokens_per_minute}
        self.server_limits: dict[str, float | None] = dict.fromkeys(NAMES)
        self.share = share
        self.window = LearnedWindow()
        self.held_back: dict[str, tuple[float, float]] = {}  # budget -> (cap, server's share), once seen
        self.requests = TokenBucket(self.limit("requests"), clock)
        self.tokens = TokenBucket(self.limit("tokens"), clock)
        self.transit_margin = transit_margin
        self._stopped = threading.Event()
        self._sleep = sleep or self._stopped.wait  # by default a sleep that `stop` cuts short
        self._clock = clock
        self._hold_until = 0.0  # set by back_off; also stops requests already waiting
        self._limits_changed_at = -math.inf  # when the server's headers last reported other limits
        self._learning = threading.RLock()  # the learned limits, window and pace
        self._first = threading.Condition()
        self._answered = not first_answer_first
        self._first_sender: int | None = None  # the thread whose request goes first
        self.wanted_at = -math.inf  # when a caller last asked for budget or still waited for it
        self._in_flight = 0  # requests between `request_started` and `request_ended`
        self._unanswered: set[Ticket | None] = set()  # requests let through whose answers have not come
        self._counting = threading.Lock()
        self._grown_at: float | None = None  # when the share last grew, until an answer since says what is left
        self._shared = False  # set_share was called: other processes spend the same limits
        self._reset_sums = {name: ResetSums() for name in NAMES}  # what the answers show of how each refills
        self._level_jumps = {name: LevelJumps() for name in NAMES}  # the same, where they say only what is left

    def limit(self, name: str) -> float | None:
        """Budget `name` a minute for this process: its share of the server's limit and of the cap."""
        known = [v * self.share for v in (self.caps[name], self.server_limits[name]) if v]
        return min(known) if known else None

    def set_share(self, fraction: float) -> None:
        """Spend `fraction` of the limits from now on. What was spent stays spent; a smaller share
        also keeps only its part of the budget banked (the rest is the other processes' now),
        and a larger one grows its bank by refilling faster (the others may still spend theirs) until
        the next answer says how much the server holds: then to its share of that."""
        with self._learning:
            before, self.share = self.share, fraction
            self._shared = True
            if fraction < before:
                self.requests.scale_level(fraction / before)
                self.tokens.scale_level(fraction / before)
            elif fraction > before:
                self._grown_at = self._clock()
            self._relearn(fraction != before)

    def wanted_within(self, seconds: float) -> bool:
        """Whether a request is under way, or a caller asked for budget or waited for it in the
        last `seconds` (a slow answer is no sign of a worker gone idle)."""
        return self._in_flight > 0 or self._clock() - self.wanted_at <= seconds

    def request_started(self) -> None:
        """A request is about to ask for budget and go; `request_ended` once it is over."""
        with self._counting:
            self._in_flight += 1

    def request_ended(self, ticket: Ticket | None = None) -> None:
        """The request is over, answered or not; `ticket`, where it got one, is no longer in flight."""
        with self._counting:
            self._in_flight -= 1
            self._unanswered.discard(ticket)

    @property
    def answered(self) -> bool:
        """Whether an answer came back (the first request's, when `first_answer_first`)."""
        return self._answered

    def delay_refill(self, seconds: float) -> None:
        """Start refilling `seconds` late each time a full bucket is first spent from: for a
        client whose first requests reach the server well after they were counted."""
        self.requests.refill_delay = self.tokens.refill_delay = seconds

    def acquire(self, tokens: int) -> Ticket:
        """Block until one request of `tokens` tokens fits both budgets; return its ticket.
        Raises `Stopped` once `stop` was called."""
        self.wanted_at = self._clock()
        self.wait_for_first_answer()
        places = self.requests.reserve(1), self.tokens.reserve(tokens)
        try:
            self._wait_for(places)
        finally:
            self.requests.release(1)
            self.tokens.release(tokens)
        if self.stopped:
            raise Stopped("the rate limiter was stopped: no request leaves")
        debts = [d for d in (self.requests.owe(1), self.tokens.owe(tokens)) if d is not None]
        with self._counting:
            ticket = Ticket(self._clock(), max(debts) if debts else None, places, solo=not self._unanswered)
            self._unanswered.add(ticket)
        return ticket

    def request_tokens(self) -> int | None:
        """The most tokens one request should carry (None: no limit known): a quarter of what
        the learned window holds, so that the budget is spent in steps the server takes, and no
        more than a quarter second of the limit, or more where the request budget would otherwise bind
        first; before the first answer, a small request."""
        return self.later_request_tokens() if self._answered else FIRST_REQUEST_TOKENS

    def later_request_tokens(self) -> int | None:
        """`request_tokens` once the first answer is in, with the limits and window known so far."""
        if self.tokens.rate is None:
            return None
        window = self.tokens.rate * self.window.seconds
        size = min(window / SHARE_OF_WINDOW, self.tokens.rate * MOST_SECONDS_A_REQUEST)
        if self.requests.rate is not None:  # as many tokens a request as keeps the request budget from binding
            size = max(size, min(window, 1.25 * self.tokens.rate / self.requests.rate))
        return max(1, int(size))

    def sent(self) -> None:
        """A request is on the wire: the buckets start refilling if they waited for one."""
        self.requests.sent()
        self.tokens.sent()

    def sleep(self, seconds: float) -> None:
        """Sleep `seconds` (a retry's backoff), or until `stop`."""
        self.wanted_at = max(self.wanted_at, self._clock() + seconds)  # the retry will want budget then
        if not self.stopped:
            self._sleep(seconds)

    def stop(self) -> None:
        """Wake every caller waiting in `acquire` or `sleep`: from now on `acquire` raises
        `Stopped` instead of letting a request leave. For an answer that no retry can fix,
        and for closing."""
        self._stopped.set()
        self.settled()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def settled(self) -> None:
        """An attempt ended, answered or not: requests held back for the first answer may go."""
        with self._first:
            self._answered = True
            self._first.notify_all()

    def wait_for_first_answer(self) -> None:
        """With `first_answer_first`, the first thread to call goes on: its request is the first.
        Any other waits here until an answer came, or `stop`."""
        me = threading.get_ident()
        with self._first:
            while not self._answered and self._first_sender not in (None, me):
                self._first.wait()
            if not self._answered:
                self._first_sender = me

    def pass_first_request(self) -> None:
        """The thread chosen to send the first request has none to send: another goes first."""
        with self._first:
            if self._first_sender == threading.get_ident():
                self._first_sender = None
                self._first.notify_all()

    def _wait_for(self, places: tuple[float, float]) -> None:
        """Sleep until the budgets cover `places`, and the transit margin after, or `stop`."""
        due = self._clock()
        while not self.stopped:
            self.wanted_at = self._clock()
            wait = self._wait(places)  # asked again at each nap: the budget may have changed
            # Covered now: leave within the transit margin, not at a due time a smaller budget set.
            due = self._clock() + wait if wait > 0 else min(due, self._clock() + self.transit_margin)
            if (left := due - self._clock()) <= 0:
                return
            self._sleep(min(left, LONGEST_NAP))

    def _wait(self, places: tuple[float, float]) -> float:
        budget = max(self.requests.wait(places[0]), self.tokens.wait(places[1]))
        held = self._hold_until - self._clock()  # a 429 arrived while we waited
        return max(budget + self.transit_margin if budget > 0 else 0.0, held)

    def refund(self, tokens: int) -> None:
        """Give back a request the server refused without charging (a 429)."""
        self.requests.adjust(-1)
        self.tokens.adjust(-tokens)

    def observe(
        self, headers: Mapping[str, str], estimated_tokens: int, used_tokens: int | None, ticket: Ticket | None = None
    ) -> None:
        """Learn from an answer the server took: its limits, how full its budget is, and the
        response's usage.

        The headers may date from when the server took the request, not from when its answer
        arrived (the ticket says when it left): taking them as current would throw away the
        refill during the request's latency, once per request that finds our bucket above zero.
        """
        first = not self._answered
        since = self._clock() - ticket.sent_at if ticket is not None else 0.0
        with self._counting:
            self._unanswered.discard(ticket)
            alone = ticket is not None and ticket.solo and not self._unanswered  # none other on its way, ever
        self._learn_limits(headers, {"requests": 1, "tokens": estimated_tokens}, since)
        if first:  # the first request was charged before any limit was known: it is the debt so far
            self._first_answer_without_levels()
            self.requests.owe(1)
            self.tokens.owe(estimated_tokens)
        if ticket is not None and ticket.debt is not None:
            with self._learning:
                self._relearn(self.window.admitted(ticket.debt))
        self._follow_resets(headers, ticket, charged={"requests": 1, "tokens": estimated_tokens})
        self._cap(headers, ticket, alone)
        if used_tokens is not None and used_tokens != estimated_tokens:
            self.tokens.adjust(used_tokens - estimated_tokens)
        self.settled()

    def refused(
        self, headers: Mapping[str, str], tokens: int, ticket: Ticket | None = None, wait: float | None = None
    ) -> None:
        """A 429 for a request of `tokens` tokens our model let through: refund it, learn the
        limits its headers carry and what its debt says of the window (and, from a server of fixed
        windows, the `wait` it asked for: until its next reset). `back_off` follows."""
        self.refund(tokens)
        with self._counting:
            self._unanswered.discard(ticket)
        self._learn_limits(headers, None)
        with self._learning:
            if (debt := _debt_to_learn_from(ticket, self._limits_changed_at)) is not None and self.window.refused(debt):
                log.info(
                    "the server refused a request our model let through: now spending at most %.1f s of the limit "
                    "at once, at %.0f%% of it",
                    self.window.seconds,
                    100 * self.window.pace,
                )
                self._relearn(True)
        self._follow_resets(headers, ticket, refused=tokens, wait=wait)
        self._cap(headers, None, alone=False)
        self.settled()

    def back_off(self, seconds: float, tokens: int) -> None:
        """A 429 said a refused (and refunded) request of `tokens` tokens fits in `seconds`:
        nobody sends before then, and the budgets hold no more than makes that true for the
        first in line, with the others still waiting queued behind it at the budgeted pace
        (not all released together when the hold ends, to meet the next 429). They are lowered,
        not emptied: an empty bucket would make the retry wait again for its own tokens."""
        for bucket, amount in ((self.requests, 1), (self.tokens, tokens)):
            if bucket.rate is not None:
                bucket.cap(amount - seconds * bucket.rate)
        self._hold_until = max(self._hold_until, self._clock() + seconds)

    def _cap(self, headers: Mapping[str, str], ticket: Ticket | None, alone: bool) -> None:
        """Hold the buckets to our share of what the server says is left. The first answer to a
        request sent since our share grew may raise them to it too: the others hold their shares
        of it, and the rest was left unspent by a process that went idle or away.

        A process alone on the limits also believes a report of more than it expected, when
        the answered request was `alone` on its way, from its send to its answer (others might
        reach the server before or after it counted, in any order), and for as long as the
        server has refused nothing our model let through: a limit raised before its headers said
        so refilled the server faster than our mirror, and that budget would otherwise stay
        banked there, unspent, to the end of the run. A server whose reports are not what it
        enforces (a minute reported, seconds enforced) shows itself by a refusal.

        Fixed windows: a report of a window already reset is left aside; the first report after
        they were found may raise the level (`TokenBucket.cap`), less everything reserved since
        the earliest request still unanswered (those may be counted after it)."""
        grown = ticket is not None and self._grown_at is not None and ticket.sent_at >= self._grown_at
        places = ticket.places if ticket is not None and alone and self._reports_trusted() else None
        for index, (bucket, name) in enumerate(((self.requests, "requests"), (self.tokens, "tokens"))):
            remaining = server_level(headers, name, self.window.seconds)
            if remaining is not None:
                place = places[index] if places else None
                if bucket.period is not None and ticket is not None:
                    if of_a_window_gone(bucket, ticket.sent_at, headers, name):
                        continue
                    if ticket.places and not self._shared:
                        place = self._earliest_unanswered(index, ticket.places[index])
                bucket.cap(remaining * self.share, ticket.sent_at if ticket else None, may_raise=grown, place=place)
                self._grown_at = None if grown else self._grown_at

    def _earliest_unanswered(self, index: int, place: float) -> float:
        """The earliest place in bucket `index` (0: requests, 1: tokens) of a request still unanswered, or `place`."""
        with self._counting:
            places = [t.places[index] for t in self._unanswered if t is not None and t.places]
        return min([place, *places])

    def _follow_resets(
        self,
        headers: Mapping[str, str],
        ticket: Ticket | None,
        charged: Mapping[str, float] | None = None,
        refused: float | None = None,
        wait: float | None = None,
    ) -> None:
        """Take a budget whose answers show fixed windows for one, and keep its next reset. Where
        they say only what is left: its jumps show them (an answer that `charged` units), and a 429
        for `refused` tokens tells the next reset, the `wait` it asks for."""
        with self._learning:
            for bucket, name in ((self.requests, "requests"), (self.tokens, "tokens")):
                if self._shows_fixed_windows(bucket, name, headers, ticket, charged, refused, wait):
                    self._relearn(True)  # at the whole limit: see _relearn
                    log.info(
                        "the server resets its %s budget at fixed times (every %.1f s or so): spending each window's "
                        "budget as it opens",
                        name,
                        bucket.period,
                    )

    def _shows_fixed_windows(
        self,
        bucket: TokenBucket,
        name: str,
        headers: Mapping[str, str],
        ticket: Ticket | None,
        charged: Mapping[str, float] | None,
        refused: float | None,
        wait: float | None,
    ) -> bool:
        """Add one answer to what budget `name`'s answers show of how it refills (see
        `_follow_resets`); whether this answer was the one that showed fixed windows."""
        now, window = self._clock(), self.window.seconds
        sent_at = ticket.sent_at if ticket is not None else now
        if until_reset(headers, name) is not None:
            return follow_resets(bucket, self._reset_sums[name], headers, name, sent_at, window)
        level = _remaining(headers, name)
        if level is None or ticket is None:
            return False
        jumps, level = self._level_jumps[name], level * self.share
        if charged is not None:
            return follow_jumps(bucket, jumps, level, charged[name] * self.share, sent_at, now, window)
        if refused is not None and wait:
            needed = 1 if name == "requests" else refused * self.share
            return follow_refusal(bucket, jumps, needed, level, wait, now, window)
        return False

    def _reports_trusted(self) -> bool:
        """Whether an answer may raise the buckets to the server's report: no other process
        spends these limits (their requests on the way are unknown here, whatever our share),
        and no refusal surprised us."""
        return not self._shared and not self.window.surprises

    def _learn_limits(self, headers: Mapping[str, str], charged: dict[str, float] | None, since: float = 0.0) -> None:
        """Take the server's limits from its headers, and (for an answer it took: `charged`
        holds what it charged, `since` seconds ago) how many seconds of them its budget held:
        what it reports left may include the refill since."""
        limits = {name: server_limit(headers, name) for name in NAMES}
        with self._learning:
            changed = any(v and v != self.server_limits[name] for name, v in limits.items())
            if changed:
                self._limits_changed_at = self._clock()
            self.server_limits.update({name: v for name, v in limits.items() if v})
            # A server that reports only what is left (Azure OpenAI) tells seconds of the configured cap.
            held = [
                (level + charged[name]) / (limit / 60) - since
                for name in NAMES
                if charged
                and (limit := limits[name] or self.caps[name])
                and (level := _remaining(headers, name)) is not None
            ]
            widened = bool(held) and self.window.reported(min(held), first=not self._answered)
            if changed:
                self._note_caps()
            self._relearn(changed or widened)
        if charged and not self._answered:
            self._note_unreported(headers)

    def _first_answer_without_levels(self) -> None:
        """A server whose first answer does not say how full its budget is may bank no more than a
        second: start there, and let sustained success widen the window."""
        with self._learning:
            if not self.window.heard and self.window.assume_shortest() and any(self.limit(n) for n in NAMES):
                log.info(
                    "the server does not say how full its budget is: spending 1 s of the limits at once, more if it "
                    "allows"
                )
                self._relearn(True)

    def _relearn(self, changed: bool) -> None:
        """Apply the limits, window and pace learned so far to both buckets. A budget of fixed
        windows takes no pace: its refusals say our resets came early, not that it spends slower."""
        if not changed:
            return
        with self._learning:
            for bucket, name in ((self.requests, "requests"), (self.tokens, "tokens")):
                limit, pace = self.limit(name), 1.0 if bucket.period is not None else self.window.pace
                bucket.set_limit(limit, self.window.seconds, pace)

    def _note_unreported(self, headers: Mapping[str, str]) -> None:
        """Say once, at the first answer, which budgets the server counts (`x-ratelimit-remaining-*`)
        without saying their limits (no `x-ratelimit-limit-*`: Azure OpenAI), where none is configured."""
        unreported = [name for name in NAMES if self.limit(name) is None and _remaining(headers, name) is not None]
        if unreported:
            log.warning(
                "the server says what is left of its %s limits but not the limits (no x-ratelimit-limit-* "
                "headers): set %s to them; until then only its 429s hold this run back",
                " and ".join(unreported),
                " and ".join(f"embedding.{_CAP_SETTING[name]}" for name in unreported),
            )

    def _note_caps(self) -> None:
        """Say once, per budget, that a configured cap holds the run below what the server allows."""
        for name in NAMES:
            cap, server = self.caps[name], self.server_limits[name] or 0
            if cap and server > cap * 1.01 and name not in self.held_back:
                self.held_back[name] = (cap, server)
                log.warning(
                    "embedding.%s = %s holds this run below the server's %s a minute: raise it or leave it unset",
                    _CAP_SETTING[name],
                    f"{cap:,.0f}",
                    f"{server:,.0f}",
                )


def _debt_to_learn_from(ticket: Ticket | None, limits_changed_at: float) -> float | None:
    """The debt a refused request left with, when its refusal says something of the window: it
    left under a known limit, and the limit has not changed since (requests sent at the old
    rate meet the new one)."""
    if ticket is None or ticket.sent_at <= limits_changed_at:
        return None
    return ticket.debt


def _remaining(headers: Mapping[str, str], name: str) -> float | None:
    try:
        return max(0.0, float(headers[f"x-ratelimit-remaining-{name}"]))
    except (KeyError, TypeError, ValueError):
        return None


__all__ = ["RateLimiter", "Stopped", "Ticket", "TokenBucket", "server_level"]
