"""`embedpipe cache check | repair` for segment files: count their good and bad vectors, and
rewrite a segment without its bad ones (or drop one whose header or size is wrong)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.cache.segments import Segment, SegmentDamaged, split_records, write_segment

_CHECK_ROWS = 65_536  # vectors checked at a time: memory stays bounded on a segment of any size


@dataclass
class SegmentHealth:
    """What one segment file holds: `good` vectors, `bad` ones by reason, and which rows are good
    (None when the file itself is damaged and none can be trusted)."""

    path: Path
    good: int = 0
    bad: Counter = field(default_factory=Counter)
    keep: np.ndarray | None = None

    @property
    def clean(self) -> bool:
        """Every row a usable vector under sorted keys."""
        return not self.bad


def segment_health(cache_path: Path) -> Iterator[SegmentHealth]:
    """The health of every segment under `cache_path`/segments, one file at a time; a file a
    running merge removed meanwhile is skipped (its rows are in the merged one)."""
    for directory in sorted((cache_path / "segments").glob("*-*")):
        dimensions = int(directory.name.rsplit("-", 1)[1])
        for path in sorted(directory.glob("*.seg")):
            try:
                yield _health(path, dimensions)
            except FileNotFoundError:
                continue


def _health(path: Path, dimensions: int) -> SegmentHealth:
    health = SegmentHealth(path)
    try:
        segment = Segment(path, dimensions)
    except SegmentDamaged:
        health.bad["damaged segment files"] += 1
        return health
    keep, in_order, before = [], True, np.empty(0, np.uint64)
    for start in range(0, segment.rows, _CHECK_ROWS):
        high, records = segment.read_rows(start, min(start + _CHECK_ROWS, segment.rows))
        keys = np.concatenate([before, high])  # the last key before: order across slices too
        in_order = in_order and not bool((keys[1:] < keys[:-1]).any())
        before = high[-1:]
        _, vectors = split_records(records)
        finite = np.isfinite(vectors).all(axis=1)
        nonzero = vectors.any(axis=1)
        health.bad["not finite"] += int((~finite).sum())
        health.bad["zero"] += int((finite & ~nonzero).sum())
        keep.append(finite & nonzero)
    health.bad["segment files with keys out of order"] += not in_order  # a repair sorts them again
    health.bad = +health.bad  # drop reasons counted zero times
    health.keep = np.concatenate(keep) if keep else np.empty(0, bool)
    health.good = int(health.keep.sum())
    return health


def repair_segment(health: SegmentHealth) -> None:
    """Rewrite a segment's good vectors, `_CHECK_ROWS` at a time into new files (sorted; the
    merges join them again), then drop it; drop it alone when none can be trusted."""
    if health.clean:
        return
    if health.keep is not None and health.good:
        segment = Segment(health.path, int(health.path.parent.name.rsplit("-", 1)[1]))
        for start in range(0, segment.rows, _CHECK_ROWS):
            end = min(start + _CHECK_ROWS, segment.rows)
            high, records = segment.read_rows(start, end)
            good = health.keep[start:end]
            if good.any():
                write_segment(health.path.parent, 0, high[good], *split_records(records[good]))
    health.path.unlink()
