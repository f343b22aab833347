import pytest

from pipeline.providers.limits.refill_meter import RefillMeter, Refusal


def meter_of(reports: list[tuple[float, float, float]]) -> RefillMeter:
    meter = RefillMeter()
    for sent_at, left, charged in reports:
        meter.add(sent_at, left, charged)
    return meter


# A server refilling 100 units a second, requests of 50 every half second: what is left stays put.
STEADY = [(t / 2, 10.0, 50.0) for t in range(8)]


@pytest.mark.parametrize(
    "reports, answered_before, rate",
    [
        (STEADY, 10.0, 100.0),
        (STEADY[::-1], 10.0, 100.0),  # answers come back in any order
        ([(0.0, 10.0, 50.0), (1.0, 40.0, 50.0), (2.0, 70.0, 50.0)], 10.0, 80.0),  # what is left rises: 30 + 50 a second
        ([(0.0, 10.0, 50.0), (0.5, 0.0, 0.0), (1.0, 10.0, 50.0)], 10.0, 50.0),  # a refusal charges nothing
        (STEADY, 2.0, 100.0),  # requests still unanswered from 2.0 on: the span ends before them
        (STEADY, 0.9, None),  # under a second of answers: noise, no measure
        ([(t / 2, 10.0, 50.0) for t in range(20)], 10.0, 100.0),  # only the last span counts
        ([(0.0, 10.0, 50.0), (0.5, 10.0, 50.0), (4.0, 10.0, 50.0), (4.5, 10.0, 50.0)], 10.0, 25.0),  # sparse: from 0.5
    ],
)
def test_the_refill_is_what_is_left_at_the_end_less_at_the_start_plus_what_was_charged_between(
    reports, answered_before, rate
):
    assert meter_of(reports).rate(answered_before) == (None if rate is None else pytest.approx(rate))


# Halved at 4 s: 100 units a second before, 50 after, requests of 50 every half second: from then
# on, the server is short of one request in two, and reports nothing left.
HALVED = [(t / 2, 10.0, 50.0) for t in range(8)] + [(4 + t / 2, 0.0, 50.0 * (t % 2)) for t in range(8)]


REFUSED = Refusal(50.0, 1.0)  # 50 short, a wait of a second: what a bucket refilling 50 a second asks


@pytest.mark.parametrize(
    "reports, limit, refusal, shown",
    [
        (HALVED, 5_000, REFUSED, 50 * 60 * 0.97),  # the server refilling 60% of the limit: followed, a little under
        (HALVED, 5_000, None, None),  # a taken answer lowers nothing
        (HALVED, 5_000, Refusal(45.0, 1.0), 45 * 60 * 0.97),  # the measures show a change, the wait how far: 45 a second
        (HALVED, 5_000, Refusal(50.0, 5.0), None),  # a wait no bucket refilling half of that asks: a fixed window's reset
        (HALVED, 5_000, Refusal(50.0, None), None),  # no wait told: nothing says a bucket refused
        (HALVED, 2_000, REFUSED, None),  # the server refills more than the limit we know: nothing to follow
        (STEADY, 6_300, Refusal(50.0, 0.5), None),  # 95% of the limit: the noise of when requests reached the server
        ([(t / 2, 0.0, 50.0 * (t % 4 == 0)) for t in range(9)], 6_000, REFUSED, 3_000),  # a quarter: halved at most
    ],
)
def test_a_refusal_where_the_server_refilled_less_than_the_limit_lowers_it_to_that(reports, limit, refusal, shown):
    meter = meter_of(reports)
    assert meter.follow(answered_before=100.0, limit=limit, window=60.0, refusal=refusal) is (shown is not None)
    assert meter.shown == (None if shown is None else pytest.approx(shown))


@pytest.mark.parametrize(
    "first, second, apart, shown",
    [
        (Refusal(10.0, 0.16), Refusal(50.0, 0.8), 0.3, 62.5 * 60 * 0.97),  # both tell 62.5 a second: followed at once
        (None, Refusal(50.0, 0.8), 0.3, None),  # one wait alone: maybe a reset's, or a few units counted otherwise
        (Refusal(10.0, 0.2), Refusal(50.0, 0.8), 0.3, None),  # 50 and 62.5 a second: a fixed window's resets
        (Refusal(10.0, 0.16), Refusal(50.0, 0.8), 5.0, None),  # seconds apart: not the same change
        (Refusal(10.0, 0.11), Refusal(50.0, 0.55), 0.3, None),  # both 91 a second: within 90% of the limit
    ],
)
def test_two_refusals_whose_waits_tell_the_same_slower_refill_lower_the_limit_before_the_measures_show_it(
    first, second, apart, shown
):
    meter = meter_of(STEADY)  # the measures show the whole limit, 100 a second
    if first is not None:
        assert meter.follow(answered_before=4.0, limit=6_000, window=60.0, refusal=first) is False
    assert meter.follow(answered_before=4.0 + apart, limit=6_000, window=60.0, refusal=second) is (shown is not None)
    assert meter.shown == (None if shown is None else pytest.approx(shown))


@pytest.mark.parametrize(
    "rising, shown, changed",
    [
        (20.0, 70 * 60, True),  # 70 a second, above 1.1 x 48.5: raised to that
        (50.0, None, True),  # 100 a second, 90% of the limit known otherwise or more: restored to it
        (2.0, 50 * 60 * 0.97, False),  # 52 a second: within a measure's noise of what we follow
    ],
)
def test_a_limit_followed_is_raised_when_the_server_refills_more_again(rising, shown, changed):
    meter = meter_of(HALVED)
    meter.follow(answered_before=7.6, limit=5_000, window=60.0, refusal=REFUSED)  # followed from the answers before 7.6 s
    for t in range(1, 7):  # from 8 s, requests of 25 every half second, what is left rising
        meter.add(7.5 + t / 2, t * rising / 2, 25.0)
    assert meter.follow(answered_before=100.0, limit=5_000, window=60.0) is changed
    assert meter.shown == (None if shown is None else pytest.approx(shown))


@pytest.mark.parametrize(
    "left, window, shown",
    [
        (15.0, 1.0, 50 * 60 * 0.97),  # 40 held: under a second of the 48.5 a second followed
        (45.0, 1.0, 70 * 60),  # 70 held: more than a second's worth, 70 a second at least
        (45.0, 10.0, 50 * 60 * 0.97),  # and well under ten seconds' worth
        (80.0, 1.0, None),  # 105 held: the whole limit again
    ],
)
def test_a_limit_followed_is_raised_when_the_server_banks_more_than_its_window_holds(left, window, shown):
    meter = meter_of(HALVED)
    meter.follow(answered_before=7.6, limit=5_000, window=window, refusal=REFUSED)
    meter.add(8.0, left, 25.0)  # one answer since: too soon to measure a rate
    meter.follow(answered_before=100.0, limit=5_000, window=window)
    assert meter.shown == (None if shown is None else pytest.approx(shown))
