"""Settings every embedpipe task shares."""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import NO_CACHE

# Task results hold live clients, open files and arrays: kept in memory, never cached or persisted.
IN_MEMORY: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}
