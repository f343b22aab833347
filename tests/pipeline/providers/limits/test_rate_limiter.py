import threading

import pytest

from pipeline.providers.limits.rate_limiter import RateLimiter, Stopped, Ticket, TokenBucket, server_level


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def take(bucket, amount):
    """One caller that reserves `amount` and does not ask again: the seconds it waits."""
    place = bucket.reserve(amount)
    bucket.release(amount)
    return bucket.wait(place)


def limiter(rpm, tpm):
    clock = Clock()
    return RateLimiter(rpm, tpm, sleep=clock.sleep, clock=clock, transit_margin=0), clock


@pytest.mark.parametrize(
    "rpm, tpm, requests, tokens_each, binding_minutes",
    [
        (600, 10**9, 3000, 1, 5),  # requests bind: 3000 at 600/min, less the banked minute
        (10**6, 60_000, 300, 1_000, 5),  # tokens bind
        (120, 120_000, 600, 2_000, 10),  # tokens bind harder than requests
    ],
)
def test_long_run_rate_is_exactly_the_budget(rpm, tpm, requests, tokens_each, binding_minutes):
    limit, clock = limiter(rpm, tpm)
    for _ in range(requests):
        limit.acquire(tokens_each)
    expected = (binding_minutes - 1) * 60  # the first minute's budget is banked at the start
    assert clock.now == pytest.approx(expected, rel=1e-6)


def test_a_large_request_is_not_starved_by_small_ones():
    limit, clock = limiter(10**6, 6_000)
    limit.acquire(6_000)  # spend the banked minute
    limit.acquire(6_000)  # first in line: waits one minute
    assert clock.now == pytest.approx(60)
    limit.acquire(1)  # behind it
    assert clock.now == pytest.approx(60.01)


def test_server_headers_lower_our_estimate_never_raise_it():
    limit, clock = limiter(600, 60_000)
    limit.observe({"x-ratelimit-remaining-tokens": "100", "x-ratelimit-remaining-requests": "junk"}, 0, None)
    assert limit.tokens.level == 100
    limit.observe({"x-ratelimit-remaining-tokens": "50000"}, 0, None)
    assert limit.tokens.level == 100


def test_server_headers_keep_the_refill_since_the_request_left():
    limit, clock = limiter(600, 60_000)
    sent_at = limit.acquire(60_000)  # the banked minute, all in one request
    clock.now += 1.5  # its latency: the budget refilled 1,500 tokens meanwhile
    limit.observe({"x-ratelimit-remaining-tokens": "0"}, 60_000, None, sent_at)
    assert limit.tokens.level == pytest.approx(1_500)
    limit.observe({"x-ratelimit-remaining-tokens": "0"}, 60_000, None)  # no send time: taken as now
    assert limit.tokens.level == 0


def full_in(seconds):  # the x-ratelimit-* headers of a 300-requests-a-minute budget
    return {"x-ratelimit-limit-requests": "300", "x-ratelimit-reset-requests": seconds}


@pytest.mark.parametrize(
    "headers, level",
    [
        ({"x-ratelimit-remaining-requests": "12"}, 12),  # whole units only
        ({"x-ratelimit-remaining-requests": "0", **full_in("59.848s")}, 0.76),  # full again in 59.848 s: 0.76 left
        ({"x-ratelimit-remaining-requests": "0", **full_in("1m0s")}, 0),
        ({"x-ratelimit-remaining-tokens": "5990", "x-ratelimit-limit-tokens": "60000", "x-ratelimit-reset-tokens": "54ms"}, 5990),  # disagrees: ignored
        ({"x-ratelimit-remaining-requests": "250", **full_in("30s")}, 250),  # a server that means something else by reset
        ({"x-ratelimit-remaining-requests": "0", **full_in("soon")}, 0),
        ({**full_in("59.848s")}, None),  # no count, no correction
    ],
)
def test_server_level_takes_the_fraction_of_a_unit_from_the_reset_header(headers, level):
    name = "tokens" if "x-ratelimit-remaining-tokens" in headers else "requests"
    assert server_level(headers, name) == (pytest.approx(level) if level is not None else None)


def test_a_fraction_of_a_request_left_on_the_server_is_not_rounded_away():
    limit, clock = limiter(300, 10**9)  # a request every 0.2 s
    for _ in range(300):
        limit.acquire(1)  # the banked minute
    clock.now = 0.19  # our bucket: 0.95 of a request
    limit.observe({"x-ratelimit-remaining-requests": "0", **full_in("59.848s")}, 0, None)  # the server's: 0.76
    limit.acquire(1)
    assert clock.now == pytest.approx(0.19 + 0.048)  # not 0.19 + 0.2, as "0" alone would make it


def test_usage_corrects_the_estimate():
    limit, _ = limiter(600, 60_000)
    limit.acquire(1_000)
    limit.observe({}, estimated_tokens=1_000, used_tokens=1_500)
    assert limit.tokens.level == 60_000 - 1_500


def test_back_off_holds_everyone_for_the_retry_after():
    limit, clock = limiter(600, 60_000)
    limit.back_off(2.0, 1)
    limit.acquire(1)  # the refused request, again
    assert clock.now == pytest.approx(2.0)
    limit.acquire(1)  # the next one, a request's refill later
    assert clock.now == pytest.approx(2.1)


@pytest.mark.parametrize(
    "headers, requests_level",
    [
        ({"x-ratelimit-remaining-requests": "50", "x-ratelimit-remaining-tokens": "10"}, 59),  # tokens short
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "9000"}, 1 - 5.0),  # requests short
        ({}, 1 - 5.0),  # the 429 does not say which: both
    ],
)
def test_a_429_lowers_only_the_budget_its_headers_show_short(headers, requests_level):
    limit, clock = limiter(60, 60_000)  # a request and 1,000 tokens a second
    limit.acquire(1_000)
    limit.back_off(5.0, 1_000, headers)
    assert limit.requests.level == pytest.approx(requests_level)
    tokens_short = "x-ratelimit-remaining-tokens" not in headers or headers["x-ratelimit-remaining-tokens"] == "10"
    assert limit.tokens.level == pytest.approx(1_000 - 5_000 if tokens_short else 59_000)


def test_a_refused_request_waits_its_retry_after_not_its_tokens_again():
    limit, clock = limiter(600, 60_000)
    limit.acquire(60_000)  # the banked minute
    limit.acquire(6_000)  # waits 6 s for its tokens, then the server refuses it: 10 ms early
    limit.refund(6_000)
    limit.observe({"x-ratelimit-remaining-tokens": "5990"}, 6_000, None)
    limit.back_off(0.01, 6_000)
    limit.acquire(6_000)
    assert clock.now == pytest.approx(6.01)


@pytest.mark.parametrize("waiting", [0, 1, 3])
def test_after_a_429_requests_already_waiting_leave_at_the_budgeted_pace_not_together(waiting):
    limit, clock = limiter(60, 10**9)  # one request a second
    for _ in range(60):
        limit.acquire(1)  # the banked minute
    places = [limit.requests.reserve(1) for _ in range(waiting)]  # due in 1, 2, 3 s
    limit.back_off(5.0, 1)  # a refused request fits in 5 s
    assert [limit.requests.wait(place) for place in places] == pytest.approx([5.0 + n for n in range(waiting)])
    for _ in places:
        limit.requests.release(1)
    limit.acquire(1)  # the refused request, again, behind those already in line
    assert clock.now == pytest.approx(5.0 + waiting)


def test_a_budget_lowered_while_a_request_waits_delays_it():
    limit, clock = limiter(60, 10**9)
    for _ in range(60):
        limit.acquire(1)
    place = limit.requests.reserve(1)  # due in 1 s
    limit.observe({"x-ratelimit-remaining-requests": "-2"}, 1, None)  # another job spent two more
    assert limit.requests.wait(place) == pytest.approx(3.0)


def test_bucket_refills_continuously_up_to_one_minute():
    clock = Clock()
    bucket = TokenBucket(60, clock)
    assert take(bucket, 60) == 0
    clock.now = 30
    assert take(bucket, 30) == 0
    clock.now = 1_000
    assert take(bucket, 0) == 0 and bucket.level == 60


def test_waiting_requests_leave_a_transit_margin_late_without_losing_throughput():
    clock = Clock()
    limit = RateLimiter(60, 10**9, sleep=clock.sleep, clock=clock, transit_margin=0.25)
    sent = []
    for _ in range(63):
        limit.acquire(1)
        sent.append(clock.now)
    assert sent[59] == 0 and sent[60] == pytest.approx(1.25)
    assert sent[62] - sent[60] == pytest.approx(2.0)  # one a second, as budgeted


def test_a_refused_request_is_refunded():
    limit, _ = limiter(600, 60_000)
    limit.acquire(5_000)
    limit.refund(5_000)
    assert (limit.requests.level, limit.tokens.level) == (600, 60_000)


@pytest.mark.parametrize("delay, first_after_bank", [(0.0, 1.0), (2.0, 3.0)])
def test_a_refill_delay_holds_back_the_refill_once_when_a_full_bucket_is_first_spent(delay, first_after_bank):
    clock = Clock()
    bucket = TokenBucket(60, clock)
    bucket.refill_delay = delay
    assert [take(bucket, 1) for _ in range(60)] == [0.0] * 60  # the banked minute goes at once
    assert take(bucket, 1) == pytest.approx(first_after_bank)
    assert take(bucket, 1) == pytest.approx(first_after_bank + 1)  # then one a second, as budgeted


@pytest.mark.parametrize(
    "spent, sends, refill_delay, next_due",
    [
        (60, [], 0.0, 1.0),  # nobody reports a send: the refill runs from the count, as before
        (60, [0.5], 0.0, 1.5),  # the first request reached the wire 0.5 s after it was counted
        (60, [0.0], 0.0, 1.0),  # ... at once
        (60, [0.2, 0.5], 0.0, 1.2),  # only the first send after a full bucket moves the refill
        (60, [0.5], 2.0, 3.0),  # sent within a refill delay: the delay alone holds the refill back
        (60, [3.0], 2.0, 4.0),  # sent after it: the refill starts at the send
        (1, [5.0], 0.0, 6.0),  # a small first request, sent once ours was full again: 59 left
    ],
)
def test_a_full_bucket_starts_refilling_when_its_first_request_is_sent(spent, sends, refill_delay, next_due):
    clock = Clock()
    bucket = TokenBucket(60, clock)  # one unit a second
    bucket.refill_delay = refill_delay
    take(bucket, spent)  # counted at 0
    for at in sends:
        clock.now = at
        bucket.sent()
    assert clock.now + take(bucket, 61 - spent) == pytest.approx(next_due)  # the minute's 61st unit


def test_stop_wakes_a_waiting_caller_and_refuses_later_ones():
    limit = RateLimiter(1, 10**9)  # the real clock and sleep: one request a minute
    limit.acquire(1)  # the banked minute
    raised = []
    waiting = threading.Thread(target=lambda: raised.append(pytest.raises(Stopped, limit.acquire, 1)))
    waiting.start()  # due in a minute
    limit.stop()
    waiting.join(timeout=10)
    assert raised and not waiting.is_alive()
    with pytest.raises(Stopped):
        limit.acquire(1)


def answer_headers(limit_requests=None, limit_tokens=None, **remaining):
    headers = {f"x-ratelimit-limit-{name}": str(v) for name, v in (("requests", limit_requests), ("tokens", limit_tokens)) if v}
    return {**headers, **{f"x-ratelimit-remaining-{name}": str(v) for name, v in remaining.items()}}


@pytest.mark.parametrize(
    "cap, server, limit",
    [
        (None, 600, 600),  # nothing configured: the server's
        (300, 600, 300),  # a cap below it holds
        (900, 600, 600),  # a cap above it: the server's
        (300, None, 300),  # a server that says nothing: the cap
        (None, None, None),  # neither: no limit but the 429s
    ],
)
def test_the_limit_is_the_servers_within_the_configured_cap(cap, server, limit):
    limit_now, _ = limiter(cap, None)
    limit_now.observe(answer_headers(limit_requests=server), 1, None)
    assert limit_now.limit("requests") == limit


def test_a_cap_below_the_servers_limit_is_said_once(caplog):
    limit, _ = limiter(None, 60_000)
    for _ in range(3):
        limit.observe(answer_headers(limit_tokens=1_000_000), 1, None)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["embedding.tokens_per_minute = 60,000 holds this run below the server's 1,000,000 a minute: raise it or leave it unset"]
    assert limit.held_back == {"tokens": (60_000, 1_000_000)}


@pytest.mark.parametrize(
    "rpm, tpm, window, size",
    [
        (10_000, 600_000, 1.0, 2_500),  # a quarter of the second's 10,000 tokens
        (10_000, 1_200_000, 10.0, 5_000),  # a quarter second of the limit, not a quarter of ten
        (20, 600_000, 10.0, 37_500),  # a request each 3 s: big enough that requests do not bind first
        (None, None, 60.0, None),  # no limit known: the provider's maximum
    ],
)
def test_a_request_carries_a_share_of_what_the_window_holds(rpm, tpm, window, size):
    limit, _ = limiter(rpm, tpm)
    limit.window.seconds = window
    limit._relearn(True)
    assert limit.request_tokens() == size


def test_processes_sharing_a_key_each_spend_their_share_of_what_the_server_reports():
    limit, _ = limiter(None, None)
    limit.share = 0.5
    limit.observe(answer_headers(limit_tokens=600_000, tokens=300_000), 0, None)
    assert limit.limit("tokens") == 300_000 and limit.tokens.level == 150_000


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_a_limit_the_server_changes_is_followed_at_its_next_answer(factor):
    limit, _ = limiter(None, None)
    limit.observe(answer_headers(limit_tokens=600_000), 0, None)
    limit.observe(answer_headers(limit_tokens=int(600_000 * factor)), 0, None)
    assert limit.tokens.rate == 10_000 * factor


@pytest.mark.parametrize(
    "other, surprised, level",
    [
        (None, False, 39_000),  # alone: the 30,000 reported, the 10,000 refilled since it left, less 0.1 s of refill
        ("answered", False, 39_000 - 5_000),  # less a request sent after it: it may have come after the count
        ("in flight", False, 10_000 - 5_000),  # one still on its way may be counted or not: ours is kept
        ("earlier", False, 5_000),  # one sent before it and answered since may have been counted after it
        (None, True, 10_000),  # a server that refused what our model let through: its reports raise nothing
    ],
)
def test_a_report_of_more_than_we_believe_raises_our_budget_where_it_can_be_trusted(other, surprised, level):
    limit, clock = limiter(None, 600_000)  # 10,000 tokens a second
    limit.window.seconds = 6.0
    limit._relearn(True)
    earlier = limit.acquire(5_000) if other == "earlier" else None
    ticket = limit.acquire(60_000)  # the bank, spent at once
    if earlier:
        limit.request_ended(earlier)  # answered before the one under test
    if other in ("answered", "in flight"):
        later = limit.acquire(5_000)  # waits 0.5 s for its budget
        if other == "answered":
            limit.request_ended(later)
    limit.window.surprises = int(surprised)
    clock.now = 1.0
    limit.observe(answer_headers(limit_tokens=600_000, tokens=30_000), 60_000, None, ticket)  # the limit rose
    assert limit.tokens.level == pytest.approx(level)


def test_a_process_sharing_the_limits_with_others_is_not_raised_by_a_report():
    limit, clock = limiter(None, 600_000)
    limit.window.seconds = 6.0
    limit.set_share(0.5)  # 5,000 tokens a second, 30,000 banked: other processes spend the rest
    limit._relearn(True)
    clock.now = 0.001
    ticket = limit.acquire(30_000)
    clock.now = 1.001
    limit.observe(answer_headers(limit_tokens=600_000, tokens=30_000), 30_000, None, ticket)
    assert limit.tokens.level == pytest.approx(5_000)  # its own refill: what the others left is theirs


class SecondsServer:
    """A server in one thread on the test's clock: it enforces `tpm` over a `window`-second
    bucket, but reports what is left as if it banked a whole minute (as a server may)."""

    def __init__(self, clock, tpm, window):
        self.clock, self.rate, self.capacity = clock, tpm / 60, tpm * window / 60
        self.level, self.minute_level, self.updated = self.capacity, float(tpm), 0.0
        self.tpm, self.answers = tpm, []  # (time, refused)

    def take(self, tokens):
        elapsed, self.updated = self.clock.now - self.updated, self.clock.now
        self.level = min(self.capacity, self.level + elapsed * self.rate)
        self.minute_level = min(self.tpm, self.minute_level + elapsed * self.rate)
        refused = self.level < tokens
        if not refused:
            self.level -= tokens
            self.minute_level -= tokens
        self.answers.append((self.clock.now, refused))
        headers = answer_headers(limit_tokens=self.tpm, tokens=max(0, int(self.minute_level)))
        return refused, headers, max(0.001, (tokens - self.level) / self.rate)  # retry-after-ms: whole milliseconds


def send_through(limit, server, tokens_in_all):
    """Send `tokens_in_all` through `limit` to a server on the test's clock, a request at a time as
    the provider does: `server.take(tokens)` answers (refused, headers, retry-after seconds)."""
    sent = 0
    while sent < tokens_in_all:
        tokens = min(limit.request_tokens() or 300_000, 300_000)
        ticket = limit.acquire(tokens)
        refused, headers, retry_after = server.take(tokens)
        if refused:
            limit.refused(headers, tokens, ticket, retry_after)
            limit.back_off(retry_after, tokens)
            continue
        limit.observe(headers, tokens, tokens, ticket)
        sent += tokens


def test_after_the_first_surprise_a_server_that_enforces_seconds_refuses_under_one_percent():
    clock = Clock()
    limit = RateLimiter(sleep=clock.sleep, clock=clock, first_answer_first=True)
    server = SecondsServer(clock, tpm=600_000, window=1.0)
    send_through(limit, server, 600_000 * 5)  # five minutes of the limit
    first = next(at for at, refused in server.answers if refused)
    later = [refused for at, refused in server.answers if at > first + 60]  # a minute to learn
    assert sum(later) < 0.01 * len(later)
    assert clock.now < 5 * 60 / 0.95  # at least 0.95 of the limit sustained


@pytest.mark.parametrize(
    "before, after, spent, level, seconds_for_next_60k",
    [
        (1.0, 0.5, 0, 30_000, 6.0),  # half the limit: half of the bank, refilled at half the rate
        (1.0, 0.5, 45_000, 7_500, 10.5),  # what was spent stays spent; half of what is left stays banked
        (1.0, 0.5, 90_000, -30_000, 18.0),  # a debt is ours whole
        (0.5, 1.0, 15_000, 15_000, 4.5),  # the bank grows only by refilling faster: the others may spend theirs
    ],
)
def test_a_share_changed_mid_run_keeps_what_was_spent(before, after, spent, level, seconds_for_next_60k):
    limit, clock = limiter(None, 600_000)  # 10,000 tokens a second
    limit.window.seconds = 6.0  # banked: 60,000 tokens at the whole limit
    limit.set_share(before)
    limit._relearn(True)
    limit.tokens.reserve(spent)
    limit.tokens.release(spent)
    limit.set_share(after)
    assert limit.tokens.level == pytest.approx(level)
    assert take(limit.tokens, 60_000) == pytest.approx(seconds_for_next_60k)


@pytest.mark.parametrize("sent_after_growth, level", [(True, 50_000), (False, 15_000)])
def test_a_grown_share_takes_its_part_of_what_the_server_has_left_at_the_next_answer(sent_after_growth, level):
    limit, clock = limiter(None, 600_000)
    limit.window.seconds = 6.0
    limit.set_share(0.5)
    limit._relearn(True)
    limit.tokens.reserve(15_000)
    limit.tokens.release(15_000)
    ticket = limit.acquire(0) if not sent_after_growth else None
    clock.sleep(0.001)
    limit.set_share(1.0)  # the other worker went idle, leaving its half of the bank unspent
    ticket = ticket or limit.acquire(0)
    limit.observe(answer_headers(limit_tokens=600_000, tokens=50_000), 0, None, ticket)
    assert limit.tokens.level == pytest.approx(level, rel=1e-3)  # not raised by an answer older than the growth


def test_a_worker_that_asked_for_budget_lately_says_so():
    limit, clock = limiter(None, 600_000)
    assert not limit.wanted_within(1.0)
    limit.acquire(10)
    clock.sleep(0.5)
    assert limit.wanted_within(1.0) and not limit.wanted_within(0.4)
    clock.sleep(5.0)
    assert not limit.wanted_within(1.0)
    limit.sleep(3.0)  # a retry's backoff, ended: the retry is about to ask
    assert limit.wanted_within(0.1)


def test_a_request_waiting_on_a_small_share_leaves_once_its_grown_share_covers_it():
    """A worker idle between partitions is cut to 1% of the limit; a request that meets the cut
    must not sleep out the wait the cut implied once the share is back and the bank restored."""
    clock = Clock()
    restored = []

    def sleep(seconds):
        clock.sleep(seconds)
        if not restored:  # the coordinator gives the share back; the next answer says the server's bank is full
            restored.append(clock.now)
            limit.set_share(1.0)
            ticket = Ticket(clock.now, None)
            limit.observe(answer_headers(limit_requests=60, requests=59), 1, None, ticket)

    limit = RateLimiter(None, None, sleep=sleep, clock=clock, transit_margin=0)
    limit.observe(answer_headers(limit_requests=60, requests=60), 1, None)  # 1 a second, a minute banked
    for _ in range(60):
        limit.acquire(1)
    limit.set_share(0.01)  # 0.01 requests a second: the next one is due in ~100 s
    limit.acquire(1)
    assert restored and clock.now <= restored[0] + 1.0


def test_a_worker_waiting_on_a_slow_answer_still_wants_its_share():
    limit, clock = limiter(None, 600_000)
    limit.request_started()
    limit.acquire(10)
    clock.sleep(5.0)  # the answer takes its time
    assert limit.wanted_within(1.0)
    limit.request_ended()
    assert not limit.wanted_within(1.0)
