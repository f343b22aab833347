"""`embedpipe cache check | repair`: find a cache's damaged entries, and drop them.

Segment files (where vectors are stored) are checked file by file (`segment_check.py`) and
mended in place. Rows (claims, and the vectors of caches from before segments) are read from
the SQLite file directly, a range of rowids at a time and, where a range fails, one row at a
time, so one damaged page loses only its own rows. Values are only ever read as bytes: a
pickled value is a bad entry, never loaded. `repair` copies every good row into a fresh cache
beside the old one, then swaps the two directories.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from diskcache.core import MODE_BINARY, MODE_RAW

from pipeline.cache.segment_check import repair_segment, segment_health
from pipeline.cache.vectors import KEY_FORMAT, cache_error, is_damage, open_store, vector_fault
from pipeline.config import load_config
from pipeline.errors import CacheError, ConfigError

_DB = "cache.db"
_ROWID_RANGE = 256  # rows per query; a range that fails is read again one row at a time
_MOST_PROBLEMS = 20  # of SQLite's integrity check: enough to see the damage, not a screenful
_COPY_BATCH = 1000  # entries per transaction of the fresh cache
_VALUE_DIR = re.compile(r"[0-9a-f]{2}")  # diskcache keeps values over 32 KB in files under these
# VectorCache.key: long ("namespace/sha256 hex") or compact ("namespace digest:dimensions/text digest")
_KEY = re.compile(r"(?P<namespace>.+:(?P<dimensions>[0-9]+))/(?:[0-9a-f]{64}|[A-Za-z0-9_-]{24})")
_COLUMNS = "rowid, key, raw, expire_time, mode, filename, value"


@dataclass(frozen=True)
class Row:
    """One row of diskcache's Cache table, as stored."""

    rowid: int
    key: object
    raw: int
    expire_time: float | None
    mode: int
    filename: str | None
    value: object


@dataclass
class CacheReport:
    """What a check or a repair found in the cache at `path`."""

    path: Path
    integrity: list[str] = field(default_factory=list)  # SQLite's integrity check's complaints
    good: int = 0  # usable vectors: kept by a repair
    bad: Counter = field(default_factory=Counter)  # entries that are no usable vector, by reason
    unreadable: int = 0  # rowids SQLite could not read: on a damaged page
    claims: int = 0  # a run's hold on texts it is sending
    lapsed_claims: int = 0  # of those, past their time: left by a run that stopped
    lost: str | None = None  # why no row of the file could be read at all (not a database...)

    @property
    def clean(self) -> bool:
        """Nothing damaged: every row read, every entry a usable vector or a claim."""
        return not self.integrity and not self.bad and not self.unreadable and not self.lost

    def check_lines(self, target: str | Path) -> list[str]:
        """The check's few lines; the last names the repair when anything is damaged."""
        lines = [
            f"cache {self.path}: {'clean' if self.clean else 'damaged'}",
            f"  integrity  {_integrity(self.integrity)}",
            f"  entries    {self.good + sum(self.bad.values()) + self.claims:,} read, "
            + (f"the rest unreadable: {self.lost}" if self.lost else f"{self.unreadable:,} unreadable"),
            f"  vectors    {self.good:,} good, {_bad(self.bad)}",
            f"  claims     {self.claims:,} ({self.lapsed_claims:,} lapsed: left by a run that stopped)",
        ]
        if not self.clean:
            lines.append(f"run `embedpipe cache repair {target}` to drop the bad entries and keep the good ones")
        return lines

    def repair_lines(self) -> list[str]:
        """What the repair kept and dropped, by reason."""
        dropped = {**self.bad, "unreadable rows": self.unreadable, "claims": self.claims}
        reasons = ", ".join(f"{n:,} {reason}" for reason, n in sorted(dropped.items()) if n) or "nothing"
        if self.lost:
            return [f"cache {self.path} repaired: no entry of the old file could be read ({self.lost}); starts empty"]
        kept = f"kept {self.good:,} vectors; dropped {sum(dropped.values()):,} ({reasons})"
        return [f"cache {self.path} repaired: {kept}"]


def _integrity(problems: list[str]) -> str:
    if not problems:
        return "ok"
    count = f"{_MOST_PROBLEMS} or more" if len(problems) >= _MOST_PROBLEMS else f"{len(problems)}"
    return f"{count} problem{'s' * (len(problems) > 1)}, first: {problems[0]}"


def _bad(bad: Counter) -> str:
    reasons = ", ".join(f"{n:,} {reason}" for reason, n in sorted(bad.items()))
    return f"{sum(bad.values()):,} bad" + (f" ({reasons})" if reasons else "")


def cache_directory(target: str, overrides: list[str] | None = None) -> Path:
    """The cache directory `target` names: a run configuration (its cache.path) or the directory."""
    path = Path(target)
    if path.is_dir():
        if overrides:
            raise ConfigError(f"{target} is a cache directory: --set needs a run configuration")
        return path
    if path.is_file():
        return Path(load_config(target, overrides or []).cache.path)
    raise ConfigError(f"{target}: no such file or directory; give a run configuration or a cache directory")


def check_cache(path: str | Path) -> CacheReport:
    """Run SQLite's integrity check, read every entry and count what is good and what is not.
    Writes nothing."""
    report = CacheReport(Path(path))
    for row in _readable_rows(report, integrity=True):
        _classify(row, report)
    try:
        for health in segment_health(report.path):
            report.good += health.good
            report.bad.update(health.bad)
    except OSError as exc:
        raise cache_error(report.path, exc, "read a segment of") from None
    return report


def repair_cache(path: str | Path) -> CacheReport:
    """Copy every good vector into a fresh cache beside `path` and swap it in, with the old
    directory's other contents (Batch API ledgers, object-store mirrors). Run it while no run
    uses the cache."""
    path = Path(path)
    report = CacheReport(path)
    fresh = path.parent / f".{path.name}.repairing"
    shutil.rmtree(fresh, ignore_errors=True)  # left by a repair that was stopped
    try:
        fresh.mkdir(mode=0o700)
        os.chmod(fresh, 0o700)  # mkdir's mode is filtered by the umask
        _copy_good_vectors(fresh, report)
    except BaseException as exc:
        shutil.rmtree(fresh, ignore_errors=True)
        if isinstance(exc, OSError | sqlite3.Error):
            raise cache_error(path, exc, "write a repaired copy beside it") from None
        raise
    _swap(path, fresh)
    try:
        for health in segment_health(path):  # moved over with the rest: mended in place
            report.good += health.good
            report.bad.update(health.bad)
            repair_segment(health)
    except OSError as exc:
        raise cache_error(path, exc, "rewrite a damaged segment") from None
    return report


def _copy_good_vectors(fresh: Path, report: CacheReport) -> None:
    store = open_store(fresh)
    try:
        batch: list[tuple[str, bytes]] = []
        for row in _readable_rows(report):
            if row.key == KEY_FORMAT:  # the cache's own setting: how its keys are made
                store.set(row.key, row.value)
                continue
            value = _classify(row, report)
            if value is not None:
                batch.append((str(row.key), value))  # a vector's key is a string: `_classify` matched it
            if len(batch) >= _COPY_BATCH:
                _store(store, batch)
                batch = []
        _store(store, batch)
    finally:
        store.close()


def _store(store, entries: list[tuple[str, bytes]]) -> None:
    with store.transact():
        for key, value in entries:
            store.set(key, value)


def _swap(path: Path, fresh: Path) -> None:
    """The fresh cache in place of the old one, then what else lived in the old one moved over
    and the rest of it deleted."""
    aside = path.parent / f".{path.name}.damaged-{os.getpid()}"
    try:
        path.rename(aside)
        try:
            fresh.rename(path)
        except OSError:
            aside.rename(path)
            raise
    except OSError as exc:
        shutil.rmtree(fresh, ignore_errors=True)
        raise cache_error(path, exc, "swap in the repaired copy") from None
    try:
        for child in aside.iterdir():
            if not (child.name.startswith(_DB) or (child.is_dir() and _VALUE_DIR.fullmatch(child.name))):
                child.rename(path / child.name)
    except OSError as exc:
        raise CacheError(
            f"cache.path {path} is repaired, but moving the rest of the old one ({aside}) "
            f"into it failed ({exc}): move what is left there by hand"
        ) from None
    shutil.rmtree(aside, ignore_errors=True)


def _readable_rows(report: CacheReport, integrity: bool = False) -> Iterator[Row]:
    """Every row of the cache's Cache table that SQLite can read, by rowid; those it cannot are
    counted in `report` (`lost`, where none can be). With `integrity`, SQLite's check first."""
    file = report.path / _DB
    if not file.is_file():
        raise CacheError(f"cache.path {report.path}: no cache there (no {_DB}); check cache.path")
    db = sqlite3.connect(file.resolve().as_uri() + "?mode=ro", uri=True)  # writes nothing
    try:
        try:
            report.integrity = _integrity_problems(db) if integrity else []
            last = _last_rowid(db)
        except sqlite3.Error as exc:
            if not is_damage(exc):
                raise cache_error(report.path, exc, "read") from None
            report.lost = str(exc)
            return
        for first in range(1, last + 1, _ROWID_RANGE):
            for row in _rows(db, first, min(first + _ROWID_RANGE - 1, last)):
                report.unreadable += row is None
                if row is not None:
                    yield row
    finally:
        db.close()


def _integrity_problems(db: sqlite3.Connection) -> list[str]:
    """SQLite's integrity check's complaints, one a line, at most `_MOST_PROBLEMS`."""
    try:
        messages = [message for (message,) in db.execute(f"PRAGMA integrity_check({_MOST_PROBLEMS})").fetchall()]
    except sqlite3.DatabaseError as exc:
        return [f"the check itself failed ({exc})"]
    lines = [line for message in messages for line in message.splitlines() if not line.startswith("*** in database")]
    return [] if lines == ["ok"] else lines[:_MOST_PROBLEMS]


def _last_rowid(db: sqlite3.Connection) -> int:
    """The highest rowid, from the table or else from its key index."""
    try:
        return db.execute("SELECT max(rowid) FROM Cache").fetchone()[0] or 0
    except sqlite3.DatabaseError:
        return db.execute("SELECT max(rowid) FROM Cache INDEXED BY Cache_key_raw").fetchone()[0] or 0


def _rows(db: sqlite3.Connection, first: int, last: int) -> list[Row | None]:
    """The rows with rowids `first` to `last`; where SQLite cannot read them at once, one at a
    time, with None for each it cannot read."""
    query = f"SELECT {_COLUMNS} FROM Cache WHERE rowid BETWEEN ? AND ?"
    try:
        return [Row(*row) for row in db.execute(query, (first, last)).fetchall()]
    except sqlite3.DatabaseError:
        pass
    rows: list[Row | None] = []
    for rowid in range(first, last + 1):
        try:
            rows.extend(Row(*row) for row in db.execute(query, (rowid, rowid)).fetchall())
        except sqlite3.DatabaseError:
            rows.append(None)
    return rows


def _classify(row: Row, report: CacheReport) -> bytes | None:
    """Count `row` in `report`; its vector's bytes when it is a good one to keep."""
    if row.key == KEY_FORMAT:
        return None
    if isinstance(row.key, str) and row.key.startswith("claim:"):
        report.claims += 1
        report.lapsed_claims += row.expire_time is not None and row.expire_time < time.time()
        return None
    value, fault = _vector_bytes(row, report.path)
    if fault is None and value is not None:
        key = _KEY.fullmatch(str(row.key))  # every vector's key matched it when read
        fault = vector_fault(value, int(key["dimensions"])) if key else "unknown key"
    if fault is not None:
        report.bad[fault] += 1
        return None
    report.good += 1
    return value


def _vector_bytes(row: Row, path: Path) -> tuple[bytes | None, str | None]:
    """The bytes `row` stores, or why it stores no vector."""
    if row.raw != 1 or not isinstance(row.key, str) or not _KEY.fullmatch(row.key):
        return None, "not a vector's key"
    if row.mode == MODE_RAW and isinstance(row.value, bytes):
        return row.value, None
    if row.mode == MODE_BINARY and row.filename:  # a file of its own: over diskcache's 32 KB inline limit
        try:
            return (path / row.filename).read_bytes(), None
        except FileNotFoundError:
            return None, "value file missing"
        except OSError:
            return None, "value file unreadable"
    return None, "not raw bytes"
