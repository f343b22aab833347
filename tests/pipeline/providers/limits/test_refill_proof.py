"""Refill not taken on trust: past what the reports show the server holds, one request at a time."""

import pytest

from pipeline.providers.limits.refill_proof import RefillProof


def spend(proof: RefillProof, requests: list[str], amount: float = 100.0) -> dict[str, tuple[float, float]]:
    """Let `requests` through together, each of `amount`: their (settled, amount), as the limiter records them."""
    settled = proof.sent - proof.refunded
    out = {}
    for request in requests:
        assert proof.may_go(amount), request
        proof.let_through(amount, request)
        out[request] = (settled, amount)
    return out


def test_a_server_that_never_refills_is_sent_one_request_past_its_bank_at_a_time():
    proof, bank = RefillProof(), 1_000.0
    first = spend(proof, ["first"])
    proof.answered("first", bank - 100, *first["first"])
    burst = spend(proof, [f"r{i}" for i in range(9)])  # the rest of the bank: 900
    probe = spend(proof, ["probe"])  # past it
    assert proof.probe == "probe" and not proof.may_go(100)
    for i, name in enumerate(reversed(list(burst))):  # answered in another order than they were counted
        proof.answered(name, bank - 100 * (i + 2), *burst[name])
    assert not proof.proven and not proof.may_go(100)
    proof.refused("probe", probe["probe"][1])
    assert proof.may_go(100) and not proof.proven  # the next probe, once the 429's wait is over


@pytest.mark.parametrize(
    "probe, left, proven",
    [
        (10.0, 0.0, False),  # the server held 1,010 of a bank of 1,000: within 2%, rounding
        (10.0, 20.0, True),  # 1,030
        (100.0, 0.0, True),  # a probe a tenth of the bank, taken: 1,100
    ],
)
def test_reports_of_more_than_the_bank_held_prove_the_refill(probe, left, proven):
    proof, bank = RefillProof(), 1_000.0
    proof.answered("first", bank - 100, *spend(proof, ["first"])["first"])
    rest = spend(proof, [f"r{i}" for i in range(9)])  # the rest of the bank
    for i, name in enumerate(rest):
        proof.answered(name, bank - 100 * (i + 2), *rest[name])
    assert proof.may_go(probe) and not proof.proven
    proof.answered("probe", left, *spend(proof, ["probe"], probe)["probe"])  # answered alone
    assert proof.proven is proven
    assert proof.probe is None


def test_answers_that_came_back_first_prove_nothing_of_requests_on_their_way_together():
    proof, bank = RefillProof(), 1_000.0
    proof.answered("first", bank - 100, *spend(proof, ["first"])["first"])
    together = spend(proof, ["a", "b", "c"])
    # c was counted first, though it left last: 700 left after it alone (a and b not yet counted).
    proof.answered("c", bank - 200, *together["c"])
    assert not proof.proven
    assert proof.covered == bank  # not 1,200: a and b may be counted after it


def test_a_request_that_ends_without_an_answer_lets_the_next_probe_go():
    proof = RefillProof()
    proof.answered("first", 0.0, *spend(proof, ["first"])["first"])  # the bank was one request
    spend(proof, ["probe"])
    assert not proof.may_go(100)
    proof.ended("probe")  # a timeout: nothing learned
    assert proof.may_go(100)
