"""What a server's `x-ratelimit-*` headers say: the limit, what is left, and when it is full again."""

from __future__ import annotations

import re
from collections.abc import Mapping

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_SECONDS_PER = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def server_limit(headers: Mapping[str, str], name: str) -> float | None:
    """The per-minute limit `x-ratelimit-limit-{name}` reports, or None when absent or not a positive number."""
    limit = _number(headers.get(f"x-ratelimit-limit-{name}"))
    return limit if limit and limit > 0 else None


def server_remaining(headers: Mapping[str, str], name: str) -> float | None:
    """The whole units `x-ratelimit-remaining-{name}` reports left (never below 0), or None."""
    remaining = _number(headers.get(f"x-ratelimit-remaining-{name}"))
    return None if remaining is None else max(0.0, remaining)


def server_level(headers: Mapping[str, str], name: str, window: float = 60.0) -> float | None:
    """What the server says is left of budget `name` ("requests" or "tokens"), or None.

    `x-ratelimit-remaining-*` counts whole units, and at a few hundred requests a minute a
    unit is a fifth of a second: taking the whole number as the level would keep our bucket
    up to a unit below the server's for the rest of the run. Where the limit and the time
    until the budget is full again (`x-ratelimit-reset-*`) come too, they give the fraction,
    for a budget that banks `window` seconds of the limit; a reset that disagrees with the
    whole count by more than a unit (a server that means something else by it) is ignored.
    """
    remaining = _number(headers.get(f"x-ratelimit-remaining-{name}"))
    limit = _number(headers.get(f"x-ratelimit-limit-{name}"))
    until_full = until_reset(headers, name)
    if remaining is None or not limit or until_full is None:
        return remaining
    level = (window - until_full) * limit / 60
    return level if abs(level - remaining) <= 1 else remaining


def until_reset(headers: Mapping[str, str], name: str) -> float | None:
    """Seconds until budget `name` is full again (`x-ratelimit-reset-*`), or None."""
    return _duration(headers.get(f"x-ratelimit-reset-{name}"))


def implied_seconds(headers: Mapping[str, str], name: str) -> float | None:
    """What is left, in seconds of the limit, plus the seconds until the budget is full again: the
    same at every answer from a server that refills continuously (its bank), anything from 0 to
    twice the window from one that resets a counter at fixed times. None without all three headers."""
    remaining = server_remaining(headers, name)
    limit, until_full = server_limit(headers, name), until_reset(headers, name)
    if remaining is None or limit is None or until_full is None:
        return None
    return remaining / (limit / 60) + until_full


def _duration(value: str | None) -> float | None:
    """Seconds in a duration as the API writes them ("6m0s", "1.5s", "20ms"), or None."""
    parts = _DURATION_PART.findall(value or "")
    if not parts or "".join(number + unit for number, unit in parts) != (value or "").strip():
        return None
    return sum(float(number) * _SECONDS_PER[unit] for number, unit in parts)


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
