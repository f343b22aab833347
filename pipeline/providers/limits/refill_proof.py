"""Refill not taken on trust: past what the server's reports show it holds, one request at a time
until they show it refilling.

A server that banks a minute and refills it continuously, and one that counts a minute and
resets it (Azure OpenAI's tokens), look alike while the bank is being spent: what each reports
left falls by what it charged. A client that believed its own refill sends, as the bank runs
out, what that refill made up; a server of fixed windows refuses all of it, each request then in
flight (9 of 440 in a run at Azure's minute, 2%). So until the reports show the server held more
than its bank could (it refilled), a request that goes past what they show it holds goes alone:
a probe. A bucket takes it, and the answers show the refill; a fixed window refuses it, and the
429's wait tells the reset (`follow_refusal`). A bucket loses nothing by the wait: it is not
full, so it refills meanwhile.

Everything is counted in units let through, in the order they left. A report of `left` after a
request was charged shows the server holds, without a refill, `left` plus what it surely counted
before: the request itself, and those answered before it left (`settled`). Requests on their
way together may be counted in any order, whatever the order of their answers.
"""

from __future__ import annotations

import math

PROOF = 0.02  # of the most the bank held: reports showing this much more show a refill, not rounding


class RefillProof:
    """Of one budget: how much the server's reports show it holds, and whether they showed it
    refilling (`proven`). Callers hold their own lock around it."""

    def __init__(self) -> None:
        self.proven = False
        self.sent = 0.0  # units let through so far, refused ones included
        self.refunded = 0.0  # units of those that the server refused (not charged)
        self.covered = -math.inf  # units, charged ones only, the reports show the server holds without a refill
        self.bank = math.inf  # the most the server can have held before any refill, as its reports show it
        self.probe: object | None = None  # the request in flight past `covered`, if any

    def goes_past(self, amount: float) -> bool:
        """Whether a request of `amount` leaving now would be a probe: it goes past what the
        reports show the server holds, and they have not shown a refill yet."""
        known = not self.proven and self.covered != -math.inf
        return known and self.sent - self.refunded + amount > self.covered

    def may_go(self, amount: float) -> bool:
        """Whether a request of `amount` may leave now: it is no probe, or no other is out."""
        return self.probe is None or not self.goes_past(amount)

    def let_through(self, amount: float, request: object) -> None:
        """A request of `amount` leaves (`may_go` said so); it is the probe where it goes past
        what the reports show."""
        if self.goes_past(amount):
            self.probe = request
        self.sent += amount

    def answered(self, request: object, left: float, settled: float, amount: float) -> None:
        """The server took `request` of `amount` and said `left` was left; `settled`: the units
        let through before it whose answers had all come when it left."""
        self.ended(request)
        if self.proven:
            return
        covered = left + settled + amount - self.refunded
        if covered > (1 + PROOF) * self.bank:
            self.proven = True
        self.covered = max(self.covered, covered)
        self.bank = min(self.bank, left + self.sent - self.refunded)  # everything out may have been charged

    def refused(self, request: object, amount: float) -> None:
        """The server refused `request` of `amount`: it charged nothing."""
        self.refunded += amount
        self.ended(request)

    def ended(self, request: object) -> None:
        """`request` is over, answered or not (a failure that carried no answer): a probe it was
        lets the next go."""
        if request is not None and request is self.probe:
            self.probe = None
