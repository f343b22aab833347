"""What the rate limiter tells the user, once: limits a server counts but does not say, and
configured caps that hold a run below what the server allows."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from pipeline.providers.limits.headers import server_remaining

log = logging.getLogger("embedpipe")
NAMES = ("requests", "tokens")
CAP_SETTING = {"requests": "requests_per_minute", "tokens": "tokens_per_minute"}


def say_limits_unreported(headers: Mapping[str, str], limit: Callable[[str], float | None]) -> None:
    """Say, at the first answer, which budgets the server counts (`x-ratelimit-remaining-*`)
    without saying their limits (no `x-ratelimit-limit-*`: Azure OpenAI), where `limit` knows none."""
    counted = [name for name in NAMES if server_remaining(headers, name) is not None]
    unreported = [name for name in counted if limit(name) is None]
    if unreported:
        log.warning(
            "the server says what is left of its %s limits but not the limits (no x-ratelimit-limit-* "
            "headers): set %s to them; until then only its 429s hold this run back",
            " and ".join(unreported),
            " and ".join(f"embedding.{CAP_SETTING[name]}" for name in unreported),
        )


def say_caps_held_back(
    caps: Mapping[str, float | None],
    server_limits: Mapping[str, float | None],
    held_back: dict[str, tuple[float, float]],
) -> None:
    """Say once per budget (kept in `held_back`) that a configured cap holds the run below the server's limit."""
    for name in NAMES:
        cap, server = caps[name], server_limits[name] or 0
        if cap and server > cap * 1.01 and name not in held_back:
            held_back[name] = (cap, server)
            log.warning(
                "embedding.%s = %s holds this run below the server's %s a minute: raise it or leave it unset",
                CAP_SETTING[name],
                f"{cap:,.0f}",
                f"{server:,.0f}",
            )
