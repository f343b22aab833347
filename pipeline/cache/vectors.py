"""Disk cache of vectors, keyed by what produced them and the exact text sent.

Vectors are stored in sorted segment files (`segments.py`), a directory per namespace and size:
raw little-endian float32, never pickled. diskcache's SQLite holds the rest: claims, the key
format, and the vectors of caches written before segments (one row each), still read.
Eviction is off: a full disk is an error, not a silent miss.
Every vector read is checked, as answers are: one that is not finite, all zeros or the wrong
size is a miss (and reported), so a damaged entry is embedded again and stored over.
Every SQLite or file error is a `CacheError`: one line naming the path and the fix.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import diskcache
import numpy as np

from pipeline.cache.segment_store import SegmentStore
from pipeline.cache.segments import key_columns
from pipeline.cache.writer import CacheWriter
from pipeline.errors import CacheError, is_disk_full

_DTYPE = np.dtype("<f4")
_MODE_RAW, _MODE_BINARY = diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY
_DAMAGED = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}
# A cache made since keys were made compact says so here; one that holds entries without it
# keeps the long keys it has ("namespace/sha256 hex"), so no vector already paid for is lost.
KEY_FORMAT = "embedpipe:key-format"
COMPACT_KEYS = 2
_TEXT_DIGEST = 18  # bytes of a text's sha256 in a compact key: 144 bits, no collision in 10^18 texts
_SEGMENT_LOOKUP_BATCH = 65_536  # texts hashed and looked up at a time: memory stays small for any call
_LOOKUP_BATCH = 500  # keys per SQL query: one query per 500 keys is 30x faster than a `get` each


def open_store(path: Path) -> diskcache.Cache:
    """The diskcache at `path`, as every embedpipe cache opens it."""
    # Each thread gets its own SQLite connection; diskcache's default 64 MB memory map and
    # 32 MB page cache per connection would put hundreds of MB in RSS for a few threads.
    return diskcache.Cache(
        str(path), eviction_policy="none", size_limit=2**62, sqlite_mmap_size=0, sqlite_cache_size=2**10
    )


@dataclass(frozen=True)
class Lookup:
    """What the cache held for some texts: their usable vectors, and the texts whose entry was
    no usable vector (not finite, zero, the wrong size, not raw bytes): misses, to embed again."""

    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Hits:
    """`Lookup` by position, for distinct texts: whether each had a usable vector (`found`), those
    vectors in the texts' order (`matrix`, a row for each found text: misses take no memory) and
    the texts whose entry was bad."""

    found: np.ndarray
    matrix: np.ndarray
    bad: list[str] = field(default_factory=list)

    @classmethod
    def at(cls, count: int, positions: list[np.ndarray], vectors: list[np.ndarray], bad: list[str]) -> Hits:
        """Of `count` texts, those at `positions` (disjoint arrays) found with `vectors` (as many rows)."""
        where = np.concatenate(positions)
        found = np.zeros(count, dtype=bool)
        found[where] = True
        return cls(found, np.concatenate(vectors)[np.argsort(where)], bad)

    def vectors(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The found ones, text -> vector."""
        return dict(zip([texts[i] for i in np.flatnonzero(self.found).tolist()], self.matrix))


class VectorCache:
    """Vectors by (namespace, text). `namespace` names provider, endpoint, model and dimensions."""

    def __init__(self, path: str | Path, namespace: str, dimensions: int):
        self.path = Path(path)
        self.namespace = namespace
        self.dimensions = dimensions
        with self._errors("open"):
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.path, 0o700)  # mkdir's mode is filtered by the umask
            self._cache = open_store(self.path)
            self.compact = _compact_keys(self._cache)
            self._setting_rows = int(self._cache.get(KEY_FORMAT) is not None)  # rows that are no vector
            segments = self.path / "segments" / f"{_digest(namespace.encode(), 6)}-{dimensions}"
            self._segments = SegmentStore(segments, dimensions)
        self._prefix = f"{_digest(namespace.encode(), 6)}:{dimensions}/" if self.compact else f"{namespace}/"
        self._writer: CacheWriter[tuple[bytes, np.ndarray]] | None = None  # started by the first write
        self._starting = threading.Lock()

    @classmethod
    def for_embedder(cls, path: str | Path, embedder) -> VectorCache:
        """The cache of `embedder`'s vectors (its namespace and dimensions) at `path`."""
        return cls(path, embedder.cache_namespace, embedder.dimensions)

    @property
    def index_bytes(self) -> int:
        """Bytes held in memory to find the vectors of segments (about 4 a key)."""
        return self._segments.index_bytes

    def key(self, text: str) -> str:
        """Where `text`'s vector is kept: "namespace/sha256 hex" in a cache of long keys; in a
        compact one (about 38 characters, not 125: a third of the bytes an entry takes at 64
        dimensions) 48 bits of the namespace's sha256, the dimensions and 144 bits of the text's."""
        return self.keys([text])[0]

    def keys(self, texts: list[str]) -> list[str]:
        """`key` of each text, at a fraction of the calls."""
        prefix = self._prefix
        if not self.compact:
            return [prefix + hashlib.sha256(text.encode()).hexdigest() for text in texts]
        return [prefix + _digest(text.encode(), _TEXT_DIGEST) for text in texts]

    def get_many(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The cached usable vectors of those `texts` that have one; anything else is a miss."""
        return self.lookup(texts).vectors

    def lookup(self, texts: list[str]) -> Lookup:
        """The usable cached vectors of `texts`, and which texts had an entry that was not one."""
        unique = list(dict.fromkeys(texts))
        hits = self.hits(unique)
        return Lookup(hits.vectors(unique), hits.bad)

    def hits(self, texts: list[str]) -> Hits:
        """`lookup` of distinct `texts`, by position: no dictionary of texts (a cached run's path).

        Segments first; then, where the SQLite file holds more than its settings (a cache from
        before segments, or claims), its rows for the rest. Only raw bytes are read; anything else
        (a pickle someone put there) is bad, never loaded.
        """
        positions, vectors = [np.empty(0, np.intp)], [np.empty((0, self.dimensions), _DTYPE)]
        bad: list[str] = []
        with self._errors("read"):
            for start in range(0, len(texts), _SEGMENT_LOOKUP_BATCH):
                some = texts[start : start + _SEGMENT_LOOKUP_BATCH]
                stored = self._segments.find(*key_columns(b"".join(_text_digests(some))))
                at, usable = start + stored.positions, usable_rows(stored.vectors)
                positions.append(at[usable])
                vectors.append(stored.vectors[usable])
                bad.extend(texts[i] for i in at[~usable].tolist())
            if sum(map(len, positions)) + len(bad) < len(texts) and len(self._cache) > self._setting_rows:
                self._older_rows_into(texts, positions, vectors, bad)
        return Hits.at(len(texts), positions, vectors, bad)

    def _older_rows_into(
        self, texts: list[str], positions: list[np.ndarray], vectors: list[np.ndarray], bad: list[str]
    ) -> None:
        """Add to `positions` and `vectors` (or `bad`) what diskcache's rows hold for those of
        `texts` the segments lacked."""
        lacked = np.ones(len(texts), dtype=bool)
        lacked[np.concatenate(positions)] = False
        skip = set(bad)
        rest = {texts[i]: i for i in np.flatnonzero(lacked).tolist() if texts[i] not in skip}
        older = Lookup()
        self._rows_into(older, list(rest))
        if older.vectors:
            positions.append(np.array([rest[text] for text in older.vectors], dtype=np.intp))
            vectors.append(np.stack(list(older.vectors.values())))
        bad.extend(older.bad)

    def _rows_into(self, result: Lookup, texts: list[str]) -> None:
        """Add what diskcache's rows hold for `texts` (one row per vector) to `result`."""
        keys = dict(zip(self.keys(texts), texts))
        names = list(keys)
        for start in range(0, len(names), _LOOKUP_BATCH):
            batch = names[start : start + _LOOKUP_BATCH]
            marks = ",".join("?" * len(batch))
            rows = self._cache._sql(
                f"SELECT key, mode, filename, value FROM Cache WHERE raw = 1 AND key IN ({marks})", batch
            ).fetchall()
            self._check_into(result, [(keys[key], self._raw_value(*stored)) for key, *stored in rows])

    def _check_into(self, result: Lookup, stored: list[tuple[str, bytes | None]]) -> None:
        """Add (text, bytes) pairs to `result`: usable vectors, or bad texts. Those of the right
        size are checked at once, as one matrix, not a check per vector."""
        size = self.dimensions * _DTYPE.itemsize
        texts, raws = [], []
        for text, raw in stored:
            if raw is not None and len(raw) == size:
                texts.append(text)
                raws.append(raw)
            else:
                result.bad.append(text)
        matrix = np.frombuffer(b"".join(raws), dtype=_DTYPE).reshape(len(raws), self.dimensions)
        self._check_vectors_into(result, texts, matrix)

    @staticmethod
    def _check_vectors_into(result: Lookup, texts: list[str], matrix: np.ndarray) -> None:
        """Add `texts` with their rows of `matrix`: usable vectors, or else bad texts."""
        usable = usable_rows(matrix)
        if usable.all():  # nearly always
            result.vectors.update(zip(texts, matrix))
            return
        result.vectors.update((text, vector) for text, vector, ok in zip(texts, matrix, usable) if ok)
        result.bad.extend(text for text, ok in zip(texts, usable) if not ok)

    def _raw_value(self, mode: int, filename: str | None, value) -> bytes | None:
        """The bytes of an entry, or None where it holds anything else. Vectors over diskcache's
        32 KB inline limit live in files (MODE_BINARY), read here directly: `Cache.get` would
        unpickle whatever the row says by then."""
        if mode == _MODE_RAW:
            return value if type(value) is bytes else None
        if mode != _MODE_BINARY or not filename:
            return None
        try:
            return (self.path / filename).read_bytes()
        except FileNotFoundError:  # deleted by hand: a miss, embedded again and stored over
            return None

    def put_many(self, vectors: dict[str, np.ndarray]) -> None:
        """Store vectors; a `CacheError` if they cannot all be kept. The cache's one writer thread
        stores them, with those other threads handed it meanwhile, as one new segment."""
        if not vectors:
            return
        writer = self._started_writer()
        matrix = np.asarray(np.stack(list(vectors.values())), dtype=_DTYPE).reshape(len(vectors), self.dimensions)
        writer.put([(b"".join(_text_digests(list(vectors))), matrix)])
        writer.flush()

    def flush_shared(self) -> None:
        """Return once what was stored can be read on other hosts: at once here (a local cache
        has no shared tier; `TieredCache` waits for its uploads)."""

    def forget_shared_misses(self, texts: list[str]) -> None:
        """Ask the shared tier for `texts` at the next lookup even if it lacked them just now
        (nothing to forget here: see `TieredCache`)."""

    def _started_writer(self) -> CacheWriter[tuple[bytes, np.ndarray]]:
        with self._starting:  # a cache only read (an estimate, a search) starts no thread
            if self._writer is None:
                self._writer = CacheWriter(self._write, lambda: None)
            return self._writer

    def _write(self, handovers: list[tuple[bytes, np.ndarray]]) -> None:
        """Store the (digests, vectors) handed over as one segment (the writer thread's)."""
        vectors = np.concatenate([matrix for _, matrix in handovers])
        with self._errors("write", needed=vectors.nbytes + 16 * len(vectors), vectors=len(vectors)):
            self._segments.add(*key_columns(b"".join(digests for digests, _ in handovers)), vectors)

    def claim_many(self, texts: list[str], owner: str, seconds: float) -> list[str]:
        """Of `texts`, those `owner` now holds for up to `seconds`: while it does, no other
        process sharing this cache sends them. Those another owner holds are left out."""
        with self._errors("write", needed=len(texts) * 256), self._cache.transact():
            return [text for text in texts if self._cache.add(self._claim_key(text), owner.encode(), expire=seconds)]

    def release_many(self, texts: list[str], owner: str) -> None:
        """Let go of `owner`'s claims on `texts` (stored or failed: either way, not sending)."""
        with self._errors("write"), self._cache.transact():
            for text in texts:
                if self._cache.get(self._claim_key(text)) == owner.encode():
                    self._cache.delete(self._claim_key(text))

    def claimed(self, texts: list[str]) -> set[str]:
        """Those of `texts` that an owner holds now."""
        with self._errors("read"):
            return {text for text in texts if self._cache.get(self._claim_key(text)) is not None}

    def _claim_key(self, text: str) -> str:
        return f"claim:{self.key(text)}"

    def close(self) -> None:
        """Store what was handed over, then close; a `CacheError` if it could not be stored."""
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            with self._errors("close"):
                try:
                    self._segments.close()
                finally:
                    self._cache.close()

    @contextmanager
    def _errors(self, action: str, needed: int = 0, vectors: int = 0) -> Iterator[None]:
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            raise cache_error(self.path, exc, action, needed, vectors) from None


def _compact_keys(store: diskcache.Cache) -> bool:
    """Whether the cache keys vectors compactly: a fresh cache does (and says so); one that
    holds entries and does not say so keeps its long keys."""
    if store.get(KEY_FORMAT) is None and store._sql("SELECT 1 FROM Cache LIMIT 1").fetchone() is None:
        store.add(KEY_FORMAT, COMPACT_KEYS)  # two processes opening a fresh cache: the first one's stays
    return store.get(KEY_FORMAT) == COMPACT_KEYS


def usable_rows(matrix: np.ndarray) -> np.ndarray:
    """For each row of `matrix`, whether it can be a vector: finite and not all zeros."""
    return np.asarray(np.isfinite(matrix).all(axis=1) & matrix.any(axis=1))


def _text_digests(texts: list[str]) -> list[bytes]:
    """The 16 bytes of each text's sha256 that key its vector in a segment."""
    sha256 = hashlib.sha256
    return [sha256(text.encode()).digest()[:16] for text in texts]


def _digest(data: bytes, size: int) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()[:size]).decode()


def vector_fault(raw: bytes, dimensions: int) -> str | None:
    """Why `raw` is not a usable vector of `dimensions` floats ("wrong size", "not finite",
    "zero"), or None when it is one: the rule `VectorCache.lookup` applies to many at once."""
    if len(raw) != dimensions * _DTYPE.itemsize:
        return "wrong size"
    vector = np.frombuffer(raw, dtype=_DTYPE)
    if not np.isfinite(vector).all():
        return "not finite"
    return None if vector.any() else "zero"


def is_damage(exc: BaseException) -> bool:
    """Whether `exc` says the SQLite file is damaged ("database disk image is malformed",
    "file is not a database"), as opposed to full, locked or forbidden."""
    return getattr(exc, "sqlite_errorname", None) in _DAMAGED or "malformed" in str(exc) or "not a database" in str(exc)


def cache_error(path: Path, exc: BaseException, action: str, needed: int = 0, vectors: int = 0) -> CacheError:
    """The one line for a SQLite or file error of the cache at `path` while doing `action`."""
    if is_damage(exc):
        return CacheError(
            f"cache.path {path} is damaged ({exc}): run `embedpipe cache repair {path}` "
            "to drop the bad entries, or delete the directory"
        )
    if is_disk_full(exc):
        what = f"it needs room to {action}"
        if vectors:
            what = f"storing {vectors:,} vectors needs about {_size(needed)} more"
        return CacheError(f"cache.path {path}: the disk is full ({what}): free space there or set cache.path elsewhere")
    return CacheError(
        f"cache.path {path}: cannot {action} the cache ({exc}): check the directory's permissions, "
        f"or run `embedpipe cache check {path}`"
    )


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{max(1, round(nbytes / 1e3))} KB"
