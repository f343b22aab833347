"""The benchmark's verdict line: each of the issue's targets met or not, from the figures."""

import pytest

from benchmarks.ratelimits import targets


def run(client, seconds, error=None, rate_limited=0, requests=100):
    return {"client": client, "seconds": seconds, "error": error, "rate_limited": rate_limited, "requests": requests}


@pytest.mark.parametrize(
    "ours, peers, sustained, unmet",
    [
        (run("embedpipe", 197.3), [run("langchain", 197.34), run("cookbook", 203.9)], 0.998, []),
        (run("embedpipe", 197.3), [run("langchain", 197.29)], 0.998, ["ahead of langchain (-0.01 s)"]),
        (run("embedpipe", 197.3), [run("langchain", 197.3)], 0.998, ["ahead of langchain (+0.00 s)"]),  # a tie is not ahead
        (run("embedpipe", 197.3), [run("langchain", 12.0, error="RateLimitError: ...")], 0.998, []),  # a peer that gave up
        (run("embedpipe", 197.3, rate_limited=1), [], 0.998, ["429s < 1% of requests (1.00%)"]),
        (run("embedpipe", 250.0), [], 0.94, ["sustained ≥ 0.95 of the limit (0.940)"]),
    ],
)
def test_the_verdict_names_each_target_not_met(ours, peers, sustained, unmet):
    line = targets(ours, peers, sustained)
    assert sorted(part.removesuffix(": NOT met") for part in line.removeprefix("targets: ").split("; ") if part.endswith("NOT met")) == sorted(unmet)
