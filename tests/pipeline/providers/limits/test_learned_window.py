"""How much of its limit a server lets a client spend at once, learned from headers and 429s."""

import pytest

from pipeline.providers.limits.learned_window import FLOOR, GROW_AFTER, MARGIN, MINUTE, SLOWER, LearnedWindow


@pytest.mark.parametrize(
    "reports, seconds",
    [
        ([(60.2, True)], 60.0),  # an idle key's first answer: a whole minute banked
        ([(10.1, True)], 10.1 - MARGIN),  # a server that banks ten seconds
        ([(0.3, True)], FLOOR),  # never below the shortest window servers enforce
        ([(10.1, True), (3.0, False)], 10.1 - MARGIN),  # a later, emptier bucket says nothing of its size
        ([(10.1, True), (20.0, False)], 20.0 - MARGIN),  # a fuller one widens it
        ([(0.5, False)], MINUTE),  # not the run's first request: the key may have been busy
    ],
)
def test_the_headers_set_the_window_on_the_first_answer_and_only_widen_it_after(reports, seconds):
    window = LearnedWindow()
    for held, first in reports:
        window.reported(held, first)
    assert window.seconds == pytest.approx(seconds)


def test_a_refusal_past_every_debt_taken_ends_the_window_there():
    window = LearnedWindow()
    for debt in (2.0, 5.0, 9.5):
        window.admitted(debt)
    assert window.refused(10.5)
    assert (window.seconds, window.ceiling, window.pace) == (9.5, 10.5, 1.0)


def test_a_refusal_at_a_debt_already_taken_slows_the_pace_and_halves_the_window():
    window = LearnedWindow(seconds=8.0)
    window.admitted(8.0)
    assert window.refused(2.0)  # a fixed window, or another client on the key
    assert (window.seconds, window.pace) == (4.0, SLOWER)


@pytest.mark.parametrize(
    "heard, refused_at, grows_to",
    [
        (0.0, None, 4.0 * 1.25),  # nothing against it: a step
        (0.0, 4.5, 4.0 * 1.25),  # once refused, no deeper than a debt it took
        (4.2, None, 4.2),  # nor past the fullest the headers ever showed
    ],
)
def test_sustained_success_grows_the_window_back_within_what_was_seen(heard, refused_at, grows_to):
    window = LearnedWindow(seconds=4.0, heard=heard, accepted=4.0 * 1.25)
    if refused_at:
        window.ceiling = refused_at
    for _ in range(GROW_AFTER - 1):
        assert not window.admitted(1.0)
    window.admitted(1.0)
    assert window.seconds == pytest.approx(grows_to)


def test_sustained_success_brings_the_pace_back():
    window = LearnedWindow(seconds=FLOOR, pace=0.9, heard=FLOOR)
    for _ in range(4 * GROW_AFTER):
        window.admitted(0.5)
    assert window.pace == 1.0 and window.seconds == FLOOR


def test_a_server_that_says_nothing_is_assumed_to_bank_the_shortest_window():
    window = LearnedWindow()
    assert window.assume_shortest() and window.seconds == FLOOR and window.widest == MINUTE
