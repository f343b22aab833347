"""What the server's answers teach a `RateLimiter`: the half of it that reads them.

An answer the server took (`observe`) or refused (`refused`) may carry its limits
(`x-ratelimit-limit-*`), how much of them is left (`-remaining-*`) and when they reset
(`-reset-*`); its timing says how much of the limit the server banks (`LearnedWindow`), and a
run of them whether it refills continuously or resets at fixed times (`fixed_windows.py`).
`LimitsFromAnswers` keeps what they showed and applies it to the two buckets; `RateLimiter`
(rate_limiter.py) holds the requests back by them.
"""

from __future__ import annotations

import logging
import threading
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
from pipeline.providers.limits.headers import server_level, server_limit, server_remaining, until_reset
from pipeline.providers.limits.learned_window import LearnedWindow
from pipeline.providers.limits.notes import NAMES, say_caps_held_back, say_limits_unreported
from pipeline.providers.limits.refill_meter import RefillMeter, Refusal
from pipeline.providers.limits.refill_proof import RefillProof
from pipeline.providers.limits.token_bucket import TokenBucket

log = logging.getLogger("embedpipe")


@dataclass(frozen=True)
class Ticket:
    """A request let through: when it left, and its debt in seconds of the limit (None: no
    limit was known), for `observe` or `refused` when its answer comes."""

    sent_at: float
    debt: float | None = None
    places: tuple[float, float] | None = None  # in the requests and tokens buckets' lines
    solo: bool = False  # no other request was on its way when it left
    # Of requests and tokens (`RefillProof`): let through before it, and of those, before the
    # earliest still unanswered as it left.
    starts: tuple[float, float] = (0.0, 0.0)
    settled: tuple[float, float] = (0.0, 0.0)
    amounts: tuple[float, float] = (1.0, 0.0)  # what it carries of each


class LimitsFromAnswers:
    """The limits, window and refills that answers show, applied to the `requests` and `tokens`
    buckets. Its state is set up by `RateLimiter.__init__`."""

    caps: dict[str, float | None]
    server_limits: dict[str, float | None]
    share: float
    window: LearnedWindow
    held_back: dict[str, tuple[float, float]]
    requests: TokenBucket
    tokens: TokenBucket
    _clock: Callable[[], float]
    _learning: threading.RLock
    _counting: threading.Lock
    _answered: bool
    _unanswered: set[Ticket | None]
    _limits_changed_at: float
    _grown_at: float | None
    _shared: bool
    _reset_sums: dict[str, ResetSums]
    _level_jumps: dict[str, LevelJumps]
    _meters: dict[str, RefillMeter]
    _proofs: dict[str, RefillProof]
    settled: Callable[[], None]  # an answer came: `RateLimiter` lets requests held back for the first go

    def limit(self, name: str) -> float | None:
        """Budget `name` a minute for this process: its share of the server's limit and of the cap,
        or of the limit its refill showed, where lower (`_follow_refill`)."""
        known = [v for v in (self._known_limit(name), self._meters[name].shown) if v]
        return min(known) * self.share if known else None

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
            self._prove_refill(headers, ticket)
        self._learn_limits(headers, {"requests": 1, "tokens": estimated_tokens}, since)
        if first:  # the first request was charged before any limit was known: it is the debt so far
            self._first_answer_without_levels()
            self.requests.owe(1)
            self.tokens.owe(estimated_tokens)
        if ticket is not None and ticket.debt is not None:
            with self._learning:
                self._relearn(self.window.admitted(ticket.debt))
        charged = {"requests": 1, "tokens": used_tokens or estimated_tokens}
        self._follow_resets(headers, ticket, charged=charged)
        self._cap(headers, ticket, alone, charged)
        self._follow_refill(headers, ticket, charged)
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
            for name, amount in zip(NAMES, (1, tokens)):
                self._proofs[name].refused(ticket, amount)
        self._learn_limits(headers, None)
        self._follow_refill(headers, ticket, refused={"requests": 1, "tokens": tokens}, wait=wait)
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

    def _prove_refill(self, headers: Mapping[str, str], ticket: Ticket | None) -> None:
        """Add an answer to what the reports show the server holds, of a budget that may not
        refill between resets (`RefillProof`); under `_counting`."""
        for index, name in enumerate(NAMES):
            proof, left = self._proofs[name], server_remaining(headers, name)
            if ticket is None or left is None:
                proof.ended(ticket)
                continue
            proof.answered(ticket, left, ticket.settled[index], ticket.amounts[index])

    def _cap(
        self, headers: Mapping[str, str], ticket: Ticket | None, alone: bool, charged: Mapping[str, float] | None = None
    ) -> None:
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
        the earliest request still unanswered (those may be counted after it). A process alone
        on the limits also learns from each report, with what it `charged`, what the window
        holds (`TokenBucket.shown_in_window`): a limit lowered or restored without a word."""
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
                if bucket.period is not None and ticket is not None and charged and not self._shared:
                    bucket.shown_in_window(remaining, charged[name], ticket.sent_at)
                self._grown_at = None if grown else self._grown_at

    def _follow_refill(
        self,
        headers: Mapping[str, str],
        ticket: Ticket | None,
        charged: Mapping[str, float] | None = None,
        refused: Mapping[str, float] | None = None,
        wait: float | None = None,
    ) -> None:
        """A bucket server that says only what is left may lower its limit without a word: what
        its answers show it refilled (`RefillMeter`) is followed where below the limit we know,
        lowered at a refusal for the budget it showed short (of a request sent since the limit
        last changed: those sent before met the old one), raised when it shows more again. A
        process alone on the limits only: others' requests, unknown here, are charged too. Fixed
        windows, once found, follow a lowered limit their own way (`TokenBucket.shown_in_window`)."""
        if ticket is None or self._shared:
            return
        for bucket, name in ((self.requests, "requests"), (self.tokens, "tokens")):
            left, limit, meter = server_remaining(headers, name), self._known_limit(name), self._meters[name]
            with self._learning:
                if bucket.period is not None and meter.shown is not None:  # the windows' own way from here
                    bucket.shown_elsewhere(meter.shown * self.share / 60 * bucket.period)
                    meter.shown = None
                    self._relearn(True)
                if left is None or limit is None or bucket.period is not None or server_limit(headers, name):
                    continue
                meter.add(ticket.sent_at, left, charged[name] if charged else 0.0)
                refusal = None  # of this budget, at the limit followed
                if refused is not None and left < refused[name] and ticket.sent_at > self._limits_changed_at:
                    refusal = Refusal(refused[name] - left, wait)
                if meter.follow(self._earliest_unanswered_sent(), limit, self.window.seconds, refusal):
                    self._limits_changed_at = self._clock()
                    log.info(
                        "the server refills its %s budget at %s a minute, as its answers show: following it",
                        name,
                        f"{self.limit(name):,.0f}",
                    )
                    self._relearn(True)

    def _known_limit(self, name: str) -> float | None:
        """Budget `name` a minute as the config and the server's headers give it (not its refill)."""
        known = [v for v in (self.caps[name], self.server_limits[name]) if v]
        return min(known) if known else None

    def _earliest_unanswered_sent(self) -> float:
        """When the earliest request still unanswered left (now, where none is)."""
        with self._counting:
            sent = [t.sent_at for t in self._unanswered if t is not None]
        return min(sent, default=self._clock())

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
        level = server_remaining(headers, name)
        if level is None or ticket is None:
            return False
        jumps, level = self._level_jumps[name], level * self.share
        if charged is not None and (known := self._known_limit(name)):
            known_rate = known * self.share / 60
            return follow_jumps(bucket, jumps, level, charged[name] * self.share, sent_at, now, window, known_rate)
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
                and (level := server_remaining(headers, name)) is not None
            ]
            widened = bool(held) and self.window.reported(min(held), first=not self._answered)
            if changed:
                say_caps_held_back(self.caps, self.server_limits, self.held_back)
            self._relearn(changed or widened)
        if charged and not self._answered:
            say_limits_unreported(headers, self.limit)

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


def _debt_to_learn_from(ticket: Ticket | None, limits_changed_at: float) -> float | None:
    """The debt a refused request left with, when its refusal says something of the window: it
    left under a known limit, and the limit has not changed since (requests sent at the old
    rate meet the new one)."""
    if ticket is None or ticket.sent_at <= limits_changed_at:
        return None
    return ticket.debt
