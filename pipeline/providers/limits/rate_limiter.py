"""Client-side rate limits that spend the whole budget the server allows, and no more.

`RateLimiter` keeps a requests bucket and a tokens bucket (`TokenBucket`). Their limits are the
server's, from its `x-ratelimit-limit-*` headers, capped by the configured ones where set; with
neither known, nothing is held back but the 429s' retry-after. How much of the limit the server
banks — a minute, or a few seconds — is learned (`LearnedWindow`), as is whether it takes our
full rate: reading the answers is `LimitsFromAnswers`' part (answers.py), holding requests back
by what they showed is this module's. Until the answers show the server refills between resets,
no more than one request at a time goes past what they show it holds (`RefillProof`). `stop`
wakes every waiting caller for good: after an answer no retry can fix, nobody sends.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping

from pipeline.providers.limits.answers import NAMES, LimitsFromAnswers, Ticket
from pipeline.providers.limits.fixed_windows import LevelJumps, ResetSums
from pipeline.providers.limits.headers import server_level, server_remaining
from pipeline.providers.limits.learned_window import LearnedWindow
from pipeline.providers.limits.refill_meter import RefillMeter
from pipeline.providers.limits.refill_proof import RefillProof
from pipeline.providers.limits.token_bucket import TokenBucket

FIRST_REQUEST_TOKENS = 1024  # before any limit is known: a request most servers' windows take (or one text)
SHARE_OF_WINDOW = 4  # a request carries at most a quarter of the tokens the window holds
# and at most a quarter second of the limit: latency grows with a request's size, and the last one's is the run's tail
MOST_SECONDS_A_REQUEST = 0.25
LONGEST_NAP = 0.5  # a waiting request asks again this often: a limit raised meanwhile lets it go sooner
PROBE_NAP = 0.01  # a request held back behind a probe (`RefillProof`) asks again this often: its answer may free it


class Stopped(Exception):
    """`RateLimiter.stop` was called while this caller waited, or before it came."""


class RateLimiter(LimitsFromAnswers):
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
        self._meters = {name: RefillMeter() for name in NAMES}  # what a server that says no limit refills
        self._proofs = {name: RefillProof() for name in NAMES}  # whether it refills between resets at all
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

    def request_ended(self, ticket: Ticket | None = None, answer_follows: bool = False) -> None:
        """The request is over, answered or not; `ticket`, where it got one, is no longer in flight.
        `answer_follows`: `observe` or `refused` is called next, with what the answer said."""
        with self._counting:
            self._in_flight -= 1
            self._unanswered.discard(ticket)
            if not answer_follows:  # else a probe is held until its answer is read: another would go blind
                for proof in self._proofs.values():
                    proof.ended(ticket)

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
            while (ticket := self._let_through(places, tokens)) is None:
                self._sleep(PROBE_NAP)
        finally:
            self.requests.release(1)
            self.tokens.release(tokens)
        return ticket

    def _let_through(self, places: tuple[float, float], tokens: int) -> Ticket | None:
        """Wait until the budgets cover `places`, then the ticket of the request that leaves, or
        None where it must wait behind a probe (`RefillProof`): the server may not refill."""
        self._wait_for(places)
        if self.stopped:
            raise Stopped("the rate limiter was stopped: no request leaves")
        amounts = (1.0, float(tokens))
        with self._counting:
            proving = [(self._proofs[name], n) for name, n in zip(NAMES, amounts) if self._proving(name)]
            if not all(proof.may_go(n) for proof, n in proving):
                return None
            debts = [d for d in (self.requests.owe(1), self.tokens.owe(tokens)) if d is not None]
            starts = (self._proofs["requests"].sent, self._proofs["tokens"].sent)
            debt = max(debts) if debts else None
            # A probe is alone on its way only because the others wait for it: its report must not
            # raise our level (`_cap`), whose margin for the trip there is shorter than a far server's.
            solo = not self._unanswered and not any(proof.goes_past(n) for proof, n in proving)
            ticket = Ticket(self._clock(), debt, places, solo, starts, self._settled(starts), amounts)
            for name, amount in zip(NAMES, amounts):
                self._proofs[name].let_through(amount, ticket)
            self._unanswered.add(ticket)
        return ticket

    def _settled(self, starts: tuple[float, float]) -> tuple[float, float]:
        """Of a request leaving now after `starts` requests and tokens: how many of them left
        before the earliest request still unanswered (all of those were answered); under `_counting`."""
        unanswered = [t.starts for t in self._unanswered if t is not None]
        return min([starts[0], *(u[0] for u in unanswered)]), min([starts[1], *(u[1] for u in unanswered)])

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

    def _proving(self, name: str) -> bool:
        """Whether budget `name` holds requests back until its refill is proven (`RefillProof`):
        it has a limit, no fixed windows were found (they have their own resets), and no other
        process spends it (their charges, unknown here, would show as ours)."""
        bucket = self.requests if name == "requests" else self.tokens
        return bucket.rate is not None and bucket.period is None and not self._shared

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

    def back_off(self, seconds: float, tokens: int, headers: Mapping[str, str] | None = None) -> None:
        """A 429 said a refused (and refunded) request of `tokens` tokens fits in `seconds`:
        nobody sends before then, and the budgets hold no more than makes that true for the
        first in line, with the others still waiting queued behind it at the budgeted pace
        (not all released together when the hold ends, to meet the next 429). They are lowered,
        not emptied: an empty bucket would make the retry wait again for its own tokens. Where
        the 429's `headers` show which budget was short, only that one is lowered: the other's
        would otherwise refill from a debt it never had, long after the hold."""
        needs = ((self.requests, "requests", 1), (self.tokens, "tokens", tokens))
        short = [(bucket, need) for bucket, name, need in needs if not _covers(headers, name, need)]
        for bucket, need in short or [(bucket, need) for bucket, _, need in needs]:
            if bucket.rate is not None:
                bucket.cap(need - seconds * bucket.rate)
        self._hold_until = max(self._hold_until, self._clock() + seconds)


def _covers(headers: Mapping[str, str] | None, name: str, need: float) -> bool:
    """Whether a 429's headers say budget `name` had `need` left: the refusal was another budget's."""
    left = server_remaining(headers or {}, name)
    return left is not None and left >= need


__all__ = ["RateLimiter", "Stopped", "Ticket", "TokenBucket", "server_level"]
