"""How much budget a server really lets a client spend at once, learned while the run goes.

A server that banks a minute lets an idle key spend a whole minute's budget at once; one that
enforces its rate over 1 or 10 seconds refuses anything past that window's share. The window
is learned in seconds of the limit, so it holds when the limit itself changes.

Every request leaves with its *debt*: what our sends since the bucket was last full would
owe a server refilling at the limit (the seconds of budget they drew ahead). A request the
server took shows the window holds at least its debt; one it refused, at more than any it
took, shows the window ends below it. A refusal at a debt it had already taken is a server
that spends slower than our rate (a fixed window, another client on the key): we pace below
the limit and shrink the window. Sustained success lets both grow back, never past the
shallowest debt refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MINUTE = 60.0  # the API's classic budget: a whole minute banked
FLOOR = 1.0  # the shortest window servers are known to enforce (Azure: 1 or 10 s)
GROW_AFTER = 20  # requests taken in a row before the window and the pace grow back a step
GROWTH = 1.25
SLOWER = 0.95  # pace kept after a refusal our model cannot explain
SLOWEST = 0.8
MARGIN = 0.05  # seconds kept short of the window the headers report: a request on its very edge may be refused
JITTER = 0.8  # a refusal above this share of the deepest debt taken is taken as the window's end


@dataclass
class LearnedWindow:
    """Seconds of the limit the server banks (`seconds`), and the share of it we spend (`pace`)."""

    seconds: float = MINUTE
    pace: float = 1.0
    accepted: float = 0.0  # the deepest debt, in seconds, the server took
    ceiling: float = math.inf  # the shallowest debt above `accepted` it refused
    streak: int = 0  # requests taken since the last refusal
    heard: float = 0.0  # the fullest the server's headers ever showed its bucket, in seconds (0: never)
    surprises: int = 0  # refusals our model did not predict

    def reported(self, seconds: float, first: bool = False) -> bool:
        """The server's headers show its bucket held `seconds` of the limit (what it reports
        left plus what it just charged). The report on a run's `first` request sets the window
        (an idle key starts full); others only widen it, never past the debts it took once it
        refused one. Returns
        whether the window changed."""
        before, seconds = self.seconds, _within(min(seconds - MARGIN, self._proven))  # a refusal outweighs any report
        if first and not self.heard or seconds > self.seconds * 1.01:
            self.seconds = seconds
        self.heard = max(self.heard, seconds)
        return self.seconds != before

    def assume_shortest(self) -> bool:
        """No report came with the first answer: assume the shortest window until success says more."""
        before, self.seconds = self.seconds, FLOOR
        return self.seconds != before

    @property
    def widest(self) -> float:
        """The window growth may reach: no wider than the headers ever showed, and once refused, no
        deeper than a debt the server took."""
        return min(MINUTE, self.heard or MINUTE, self._proven)

    @property
    def _proven(self) -> float:
        """Once the server refused a debt past those it took, the deepest it took; else no bound."""
        return max(self.accepted, FLOOR) if self.ceiling < math.inf else math.inf

    def admitted(self, debt: float) -> bool:
        """The server took a request that left at `debt` seconds; returns whether anything grew."""
        self.accepted = max(self.accepted, debt)
        self.streak += 1
        if self.streak % GROW_AFTER or (self.seconds >= self.widest and self.pace >= 1):
            return False
        self.seconds = max(self.seconds, min(self.widest, self.seconds * GROWTH))
        self.pace = min(1.0, self.pace + (1 - SLOWER) / 2)
        return True

    def refused(self, debt: float) -> bool:
        """The server refused a request that left at `debt` seconds, which our model said fitted;
        returns whether the window or the pace changed."""
        before = (self.seconds, self.pace)
        self.streak = 0
        self.surprises += 1
        if debt > self.accepted * JITTER:  # past everything it took: the window ends in between
            self.ceiling = min(self.ceiling, debt)
            self.seconds = _within(min(self.seconds, max(self.accepted, FLOOR)))
        else:
            self.pace = max(SLOWEST, self.pace * SLOWER)
            self.seconds = _within(self.seconds / 2)
        return (self.seconds, self.pace) != before


def _within(seconds: float) -> float:
    return min(MINUTE, max(FLOOR, seconds))
