"""Fixed windows (a counter reset at fixed times) told apart from a bucket, and spent as they open."""

import math

import pytest

from pipeline.providers.limits.fixed_windows import LevelJumps, ResetSums, follow_jumps, follow_refusal
from pipeline.providers.limits.headers import implied_seconds
from pipeline.providers.limits.rate_limiter import RateLimiter
from pipeline.providers.limits.token_bucket import TokenBucket
from tests.pipeline.providers.limits.test_rate_limiter import Clock, send_through, take


def headers(limit: int, remaining: int, reset: str) -> dict:
    return {
        "x-ratelimit-limit-tokens": str(limit),
        "x-ratelimit-remaining-tokens": str(remaining),
        "x-ratelimit-reset-tokens": reset,
    }


@pytest.mark.parametrize(
    "answer, seconds",
    [
        (headers(60_000, 400, "0.6s"), 1.0),  # 400 tokens left at 1,000 a second, full in 0.6 s: a 1 s bank
        (headers(600_000, 0, "1m0s"), 60.0),
        (headers(60_000, 1_000, "1s"), 2.0),  # a fixed window just reset: a window left and a window to wait
        ({"x-ratelimit-limit-tokens": "60000", "x-ratelimit-remaining-tokens": "5"}, None),  # no reset said
    ],
)
def test_an_answer_implies_seconds_left_plus_seconds_until_full(answer, seconds):
    assert implied_seconds(answer, "tokens") == (pytest.approx(seconds) if seconds is not None else None)


def sums_of(answers: list[tuple[float, float]], unit: float = 0.001) -> bool:
    sums = ResetSums()
    return any([sums.add(implied, until, unit) for implied, until in answers])


@pytest.mark.parametrize(
    "answers, fixed",
    [
        ([(10.0, 0.2), (9.99, 4.0), (10.0, 9.9), (9.98, 0.0)], False),  # a bucket: the same sum, but rounding
        ([(1.0, 0.5), (0.6, 0.6)], False),  # whole units of 0.4 s: a bucket of a few units a second
        ([(19.0, 9.6), (12.0, 5.0), (0.5, 0.4)], True),  # a 10 s window spent, nearly at its reset
        ([(1.9, 0.95), (0.1, 0.05), (1.8, 0.9)], True),  # 1 s windows: spent, then reset
    ],
)
def test_only_sums_a_bucket_cannot_show_are_taken_for_fixed_windows(answers, fixed):
    unit = 0.4 if answers[0] == (1.0, 0.5) else 0.001
    assert sums_of(answers, unit) is fixed


def test_a_bucket_of_fixed_windows_refills_only_at_its_resets():
    clock = Clock()
    bucket = TokenBucket(60_000, clock, window=1.0)  # 1,000 tokens a second
    bucket.resets_every(1.0, next_reset=0.4)
    assert take(bucket, 1_000) == 0  # the window's budget at once
    clock.now = 0.3
    early = bucket.reserve(100)
    assert bucket.wait(early) == pytest.approx(0.1)  # nothing refilled: wait for the reset
    clock.now = 0.4
    assert bucket.wait(early) == 0
    bucket.release(100)  # it leaves, in the new window
    assert take(bucket, 900) == 0  # the rest of the reset's 1,000
    places = [bucket.reserve(800) for _ in range(3)]  # three callers waiting in line
    assert [bucket.wait(p) for p in places] == pytest.approx([1.0, 2.0, 3.0])  # a window each
    bucket.resets_every(1.0, next_reset=0.45)  # an answer says the reset came at 0.45: the next is at 1.45
    assert bucket.reset_at == pytest.approx(1.45)
    bucket.resets_every(1.0, next_reset=0.41)  # an earlier report moves nothing
    assert bucket.reset_at == pytest.approx(1.45)
    clock.now = 1.45
    assert bucket.wait(places[0]) == 0
    bucket.release(800)  # the first leaves; the others wait a window each
    assert [bucket.wait(p) for p in places[1:]] == pytest.approx([1.0, 2.0])


class FixedWindowServer:
    """A server in one thread on the test's clock: `tpm` a minute, as a counter of `window`
    seconds' worth reset every `window` seconds from `phase`; it reports the time to the reset,
    unless `remaining_only` (Azure's headers: only what is left; a 429 still says how long to wait)."""

    def __init__(self, clock, tpm, window, phase, remaining_only=False):
        self.clock, self.tpm, self.window, self.phase = clock, tpm, window, phase
        self.remaining_only = remaining_only
        self.capacity = tpm * window / 60
        self.level, self.index, self.answers = self.capacity, 0, []  # (time, refused)

    def take(self, tokens):
        index = math.floor((self.clock.now + self.phase) / self.window)
        if index != self.index:
            self.level, self.index = self.capacity, index
        refused = self.level < min(tokens, self.capacity)
        self.level -= 0 if refused else tokens
        self.answers.append((self.clock.now, refused))
        until = (index + 1) * self.window - (self.clock.now + self.phase)
        answer = headers(self.tpm, max(0, int(self.level)), f"{until:.3f}s")
        if self.remaining_only:
            answer = {"x-ratelimit-remaining-tokens": answer["x-ratelimit-remaining-tokens"]}
        return refused, answer, until


@pytest.mark.parametrize("remaining_only", [False, True], ids=["all headers", "what is left only, limits configured"])
@pytest.mark.parametrize("window, phase", [(1.0, 0.3), (10.0, 0.7), (10.0, 9.9), (60.0, 30.0)])
def test_a_server_of_fixed_windows_is_spent_as_each_window_opens_with_under_one_percent_refused(
    window, phase, remaining_only
):
    clock = Clock()
    tpm = 600_000 if remaining_only else None  # the headers say no limit: the user does
    limit = RateLimiter(tokens_per_minute=tpm, sleep=clock.sleep, clock=clock, first_answer_first=True, transit_margin=0)
    phase = phase * window / 10 if window == 10 else phase
    server = FixedWindowServer(clock, tpm=600_000, window=window, phase=phase, remaining_only=remaining_only)
    windows = 30
    send_through(limit, server, server.capacity * windows)
    assert limit.tokens.period is not None
    first = next((at for at, refused in server.answers if refused), 0.0)
    later = [refused for at, refused in server.answers if at > first + 2 * window]
    assert sum(later) < 0.01 * len(later)
    fastest = (windows - 1) * window  # a window at once, then one at each reset
    assert clock.now <= fastest + window  # the first window or two to learn, none lost after


def test_a_bucket_that_says_when_it_is_full_is_never_taken_for_fixed_windows():
    clock = Clock()
    limit = RateLimiter(sleep=clock.sleep, clock=clock, first_answer_first=True, transit_margin=0)
    rate, capacity, level, updated = 10_000.0, 100_000.0, 100_000.0, 0.0  # 600,000 a minute, 10 s banked
    for _ in range(400):
        ticket = limit.acquire(tokens := min(limit.request_tokens() or 5_000, 5_000))
        level, updated = min(capacity, level + (clock.now - updated) * rate), clock.now
        level -= tokens
        answer = headers(600_000, max(0, int(level)), f"{(capacity - level) / rate:.3f}s")
        limit.observe(answer, tokens, tokens, ticket)
    assert limit.tokens.period is None and limit.requests.period is None


def test_only_the_first_report_after_fixed_windows_are_found_may_raise_the_level():
    clock = Clock()
    bucket = TokenBucket(60_000, clock, window=1.0)
    place = bucket.reserve(3_000)  # spent past the window: our level is -2,000
    bucket.release(3_000)
    bucket.resets_every(1.0, next_reset=0.6)
    bucket.cap(900, since=0.0, place=place)  # the server reset before we knew: it has 900 left
    assert bucket.level == pytest.approx(900)
    bucket.level = 100  # spent since
    bucket.cap(900, since=0.0, place=place)  # a late answer, counted before the others: lowers only
    assert bucket.level == pytest.approx(100)


def test_a_window_believed_from_its_first_report_is_not_credited_again_when_the_whole_limit_returns():
    clock = Clock()
    bucket = TokenBucket(24_000, clock, window=1.0)  # a lowered refill followed, as a bucket's: 400 a window
    place = bucket.reserve(114)
    bucket.release(114)
    bucket.release(bucket.reserve(3_000))  # sent after it
    bucket.resets_every(1.0, next_reset=0.6)  # fixed windows found mid-window
    bucket.cap(886, since=0.0, place=place)  # the server reset before we knew: 886 left, then our 3,000
    assert bucket.level == pytest.approx(886 - 3_000)
    bucket.set_limit(60_000, 1.0)  # the whole limit again: 1,000 a window
    bucket.shown_in_window(772, 114, sent_at=0.1)  # a later report of the same window: 886 in all, as told
    assert bucket.level == pytest.approx(886 - 3_000)  # credited once (twice, 486 more went into a spent window)


def test_a_budget_of_fixed_windows_is_spent_at_the_whole_limit_whatever_slowed_the_pace():
    clock = Clock()
    limit = RateLimiter(sleep=clock.sleep, clock=clock, transit_margin=0)
    limit.window.pace = 0.8  # as after refusals our model could not explain
    limit.observe(headers(60_000, 900, "0.5s"), 100, 100, limit.acquire(100))  # a sum of 1.4 s
    assert limit.tokens.rate == pytest.approx(800)
    limit.observe(headers(60_000, 0, "0.1s"), 100, 100, limit.acquire(100))  # 0.1 s: fixed windows
    assert limit.tokens.period is not None and limit.tokens.rate == pytest.approx(1_000)


def test_a_longer_period_told_mid_window_adds_to_what_the_window_holds():
    clock = Clock()
    bucket = TokenBucket(60_000, clock, window=10.0)
    bucket.resets_every(9.5, next_reset=5.0)  # first taken for 9.5 s: 9,500 tokens a window
    assert take(bucket, 9_000) == 0
    bucket.resets_every(10.0, next_reset=5.0)  # an answer told of a longer wait: 10 s, 10,000
    assert bucket.level == pytest.approx(1_000)


def watched_window(clock) -> TokenBucket:
    """A bucket of 1,000 tokens a window, reset every second; the window opened at 1.0 seen from its start."""
    bucket = TokenBucket(60_000, clock, window=1.0)
    bucket.resets_every(1.0, next_reset=1.0)
    clock.now = 1.0
    assert take(bucket, 0) == 0
    return bucket


@pytest.mark.parametrize(
    "reports, held_next",
    [
        ([(400, 100, 1.1), (100, 100, 1.1)], 500),  # the first request counted shows half: the next window holds half
        ([(850, 100, 1.1)], 1_000),  # 950 of 1,000: rounding, not a lowered limit
        ([(100, 100, 0.9)], 1_000),  # a request of the window before shows nothing of this one
        ([], 1_000),  # a window with no answer: the whole capacity
    ],
)
def test_a_fixed_window_shown_to_hold_less_than_its_limit_opens_the_next_one_at_that(reports, held_next):
    clock = Clock()
    bucket = watched_window(clock)
    for remaining, charged, sent_at in reports:
        bucket.shown_in_window(remaining, charged, sent_at)
    clock.now = 2.0
    assert take(bucket, 0) == 0 and bucket.level == pytest.approx(held_next)


def test_a_window_not_watched_from_its_start_shows_nothing_of_the_next():
    clock = Clock()
    bucket = TokenBucket(60_000, clock, window=1.0)
    bucket.resets_every(1.0, next_reset=0.5)  # fixed windows found mid-window: its first answers were not seen
    bucket.shown_in_window(400, 100, 0.1)
    clock.now = 0.5
    assert take(bucket, 0) == 0 and bucket.level == pytest.approx(1_000)


@pytest.mark.parametrize(
    "reports, held_next",
    [
        ([], 500),  # the refill measured while the server was taken for a bucket: half the limit
        ([(100, 100, 0.1)], 500),  # a report of the window under way that shows no more
        ([(800, 100, 0.1)], 1_000),  # one that shows more: the limit is back
    ],
)
def test_a_window_found_mid_way_opens_the_next_at_the_slower_refill_measured_before_it(reports, held_next):
    clock = Clock()
    bucket = TokenBucket(60_000, clock, window=1.0)
    bucket.resets_every(1.0, next_reset=0.5)  # found mid-window: its reports were not all seen
    bucket.shown_elsewhere(500)
    for remaining, charged, sent_at in reports:
        bucket.shown_in_window(remaining, charged, sent_at)
    clock.now = 0.5
    assert take(bucket, 0) == 0 and bucket.level == pytest.approx(held_next)


def test_a_report_of_more_than_the_window_was_believed_to_hold_is_spent_at_once():
    clock = Clock()
    bucket = watched_window(clock)
    bucket.shown_in_window(400, 100, 1.1)  # a window of 500: a limit halved without a word
    clock.now = 2.0
    assert take(bucket, 500) == 0  # the next window's 500 at once
    bucket.shown_in_window(900, 100, 2.0)  # the first counted of them: the limit is back, 1,000
    assert bucket.level == pytest.approx(500)
    bucket.shown_in_window(500, 100, 2.0)  # one counted later says less: nothing more
    assert bucket.level == pytest.approx(500)
    clock.now = 3.0
    assert take(bucket, 0) == 0 and bucket.level == pytest.approx(1_000)


def test_a_longer_period_found_adds_to_a_window_shown_short_once():
    clock = Clock()
    bucket = watched_window(clock)
    bucket.shown_in_window(400, 100, 1.1)
    clock.now = 2.0
    assert take(bucket, 500) == 0  # a window believed to hold 500, all sent
    bucket.resets_every(1.2, next_reset=3.2)  # a longer period: 200 more a window
    bucket.shown_in_window(1_100, 100, 2.0)  # and the whole of it shown: 1,200
    assert bucket.level == pytest.approx(1_200 - 500)  # not 200 more on top


# Reports of what is left, from a server that does not say when it is full again: 100 a second,
# 1,000 a window. Each is (when the request left, when its answer came, the level it reported).
JUMPS = {
    "a bucket refilling at the limit": ([(0.0, 0.1, 0), (0.3, 0.4, 30), (2.0, 2.1, 200)], None),
    "a reset between two answers": ([(0.0, 0.1, 0), (0.3, 0.4, 20), (1.1, 1.2, 900)], 0.3),
    "a jump from a report counted maybe after it": ([(0.0, 0.5, 0), (0.45, 0.6, 900)], None),
    "a rise a bucket could refill, slowly": ([(0.0, 0.1, 0), (3.0, 3.1, 320)], None),
    # Requests of a quarter window paced at the limit: a reset shows as 0.23 of a window more than the refill
    "a reset between requests paced at the limit": ([(0.0, 2.5, 10), (2.6, 5.1, 750)], 0.0),
}


@pytest.mark.parametrize("case", JUMPS)
def test_a_level_that_rose_past_what_the_limit_refills_shows_a_reset_and_the_earliest_it_was(case):
    reports, earliest = JUMPS[case]
    jumps = LevelJumps()
    found = [jumps.add(sent, answered, level, rate=100.0, budget=1_000.0) for sent, answered, level in reports]
    assert found[:-1] == [None] * (len(reports) - 1) and found[-1] == earliest


def fixed_bucket(clock, period=None):
    bucket = TokenBucket(6_000, clock, window=10.0)  # 100 a second
    if period:
        bucket.resets_every(period, next_reset=0.0)
    return bucket


@pytest.mark.parametrize(
    "wait, fixed",
    [(2.0, False), (5.5, False), (8.0, True)],  # a bucket at the limit asks at most 5 (half a window) + 0.5
)
def test_a_429_that_waits_longer_than_a_bucket_would_shows_fixed_windows_and_when_the_next_reset_is(wait, fixed):
    clock = Clock()
    clock.now = 3.0
    bucket = fixed_bucket(clock)
    jumps = LevelJumps()
    found = follow_refusal(bucket, jumps, needed=50, level=10, wait=wait, now=clock.now, window=10.0)
    assert found is fixed and (bucket.period is not None) is fixed
    assert jumps.told == pytest.approx(3.0 + wait)  # kept either way: a jump later says when its reset was
    if fixed:
        assert bucket.reset_at == pytest.approx(11.0)


def test_resets_told_a_window_apart_correct_a_period_learned_short():
    clock = Clock()
    bucket, jumps = fixed_bucket(clock, period=9.0), LevelJumps()
    for now, wait in ((3.0, 7.0), (19.0, 1.0)):  # resets at 10 and 20: ours at 9 came early
        clock.now = now
        follow_refusal(bucket, jumps, needed=50, level=0, wait=wait, now=now, window=9.0)
    assert bucket.period == pytest.approx(10.0) and bucket.reset_at == pytest.approx(20.0)


def test_a_jump_after_a_told_wait_takes_the_reset_it_told():
    clock = Clock()
    bucket, jumps = fixed_bucket(clock), LevelJumps()
    follow_jumps(bucket, jumps, level=0, charged=100, sent_at=0.0, now=0.1, window=10.0, known_rate=bucket.limit_rate)
    clock.now = 0.2
    follow_refusal(bucket, jumps, needed=100, level=0, wait=2.8, now=0.2, window=10.0)  # a bucket could ask that
    clock.now = 3.2
    assert follow_jumps(
        bucket, jumps, level=900, charged=100, sent_at=3.0, now=3.2, window=10.0, known_rate=bucket.limit_rate
    )
    assert bucket.period == pytest.approx(10.0) and bucket.reset_at == pytest.approx(13.0)  # not 10, from 0.0


def test_the_most_a_budget_held_counts_in_seconds_of_the_limit_as_known_then():
    clock = Clock()
    bucket, jumps = fixed_bucket(clock), LevelJumps()
    follow_jumps(bucket, jumps, level=900, charged=100, sent_at=0.0, now=0.1, window=1.0, known_rate=100.0)
    assert jumps.period(bucket, window=1.0) == pytest.approx(10.0)  # 1,000 held at 100 a second
    # Our share halved: 500 held now is 10 s of it too, and the 1,000 before is not 20 s
    follow_jumps(bucket, jumps, level=400, charged=100, sent_at=0.2, now=0.3, window=1.0, known_rate=50.0)
    assert jumps.period(bucket, window=1.0) == pytest.approx(10.0)
