"""The coordinator's books, on a clock the test holds: who holds a text, when a claim lapses or
goes with its worker, and how the rate limit is split among the workers drawing on it."""

import pytest

from pipeline.run.coordination import LEAST_SHARE, SILENT_SECONDS, ClaimBook, ShareBook

A, B = "tcp://a:1", "tcp://b:1"


@pytest.mark.parametrize(
    "steps, expected",
    [
        # (what happens, at time) ... then who may claim k1..k3 at the end
        ([("claim", "x", A, 0)], {"k1": False, "k2": False, "k3": True}),
        ([("claim", "x", A, 0), ("release", "x", A, 1)], {"k1": True, "k2": True, "k3": True}),
        ([("claim", "x", A, 0), ("release", "y", B, 1)], {"k1": False, "k2": False, "k3": True}),  # not y's to let go
        ([("claim", "x", A, 0), ("drop", None, A, 1)], {"k1": True, "k2": True, "k3": True}),  # its worker died
        ([("claim", "x", A, 0), ("drop", None, B, 1)], {"k1": False, "k2": False, "k3": True}),
        ([("claim", "x", A, 0), ("wait", None, None, 100)], {"k1": True, "k2": True, "k3": True}),  # lapsed
        ([("claim", "x", A, 0), ("wait", None, None, 99)], {"k1": False, "k2": False, "k3": True}),
    ],
)
def test_a_claim_holds_until_let_go_its_worker_leaves_or_it_lapses(steps, expected):
    book, now = ClaimBook(), 0.0
    for action, owner, worker, at in steps:
        now = at
        if action == "claim":
            assert book.claim(["k1", "k2"], owner, worker, 100.0, now) == [0, 1]
        elif action == "release":
            book.release(["k1", "k2"], owner)
        elif action == "drop":
            book.drop_worker(worker)
    keys = ["k1", "k2", "k3"]
    assert {keys[i] for i in book.claimed(keys, now)} == {k for k, free in expected.items() if not free}
    assert {keys[i] for i in book.claim(keys, "z", B, 100.0, now)} == {k for k, free in expected.items() if free}


def test_a_claim_already_held_is_not_given_again_even_to_its_owner():
    book = ClaimBook()
    assert book.claim(["k1"], "x", A, 10.0, 0.0) == [0]
    assert book.claim(["k0", "k1"], "x", A, 10.0, 1.0) == [0]  # as the local cache's `add`
    assert book.drop_worker(A) == 2


def test_lapsed_claims_are_swept_out_of_the_book():
    book = ClaimBook()
    book.claim([f"k{i}" for i in range(1000)], "x", A, 5.0, 0.0)
    book.claim(["new"], "y", B, 5.0, 100.0)
    assert list(book.holders) == ["new"]


def ask(book, worker, wanted, at):
    return round(book.share(worker, wanted, at), 3)


@pytest.mark.parametrize(
    "asks, expected",
    [
        # (worker, wanted, at, share it is told)
        ([(A, True, 0, 1.0)], "alone: the whole limit"),
        ([(A, True, 0, 1.0), (B, True, 0.1, LEAST_SHARE), (A, True, 1, 0.5), (B, True, 1.1, 0.5)], "B joins"),
        ([(A, True, 0, 1.0), (B, True, 0, LEAST_SHARE), (A, True, 1, 0.5), (B, True, 1, 0.5),
          (B, False, 1.5, LEAST_SHARE), (A, True, 2, 0.99)], "B goes idle: A gets all it leaves"),
        ([(A, True, 0, 1.0), (B, True, 0, LEAST_SHARE), (A, True, 1, 0.5), (B, True, 1, 0.5),
          (A, True, 5, 0.5)], "B has not asked since: it holds its share until it asks"),
        ([(A, False, 0, LEAST_SHARE), (B, True, 0, 0.99)], "A never drew"),
        ([(A, True, 0, 1.0), (B, True, SILENT_SECONDS + 1, 1.0)], "A fell silent: its share is free"),
    ],
)
def test_the_workers_drawing_budget_split_it_and_never_hold_more_than_all_of_it(asks, expected):
    book = ShareBook()
    told = [ask(book, worker, wanted, at) for worker, wanted, at, _ in asks]
    assert told == [share for *_, share in asks], expected
    assert sum(book.told.values()) <= 1.0 + LEAST_SHARE


def test_a_worker_that_leaves_frees_its_share_at_the_others_next_ask():
    book = ShareBook()
    for at in (0, 1):
        ask(book, A, True, at), ask(book, B, True, at)
    assert ask(book, A, True, 2) == 0.5
    book.drop_worker(B)
    assert ask(book, A, True, 2.1) == 1.0
