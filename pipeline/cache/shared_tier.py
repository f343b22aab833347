"""A cache tier on storage every host sees (`cache.shared_path`: s3://, gs://, az://, or a directory).

One object per vector, content-addressed:
`<shared_path>/<namespace digest>-<dimensions>/<first 2 hex of the text digest>/<text digest>`,
holding the same little-endian float32 bytes the local cache stores. The digests are those of
the local cache's compact keys (sha256: 48 bits of the namespace, 144 of the text), written in
hex, not base64: on a case-insensitive file system (a share mounted on macOS or Windows) two
base64 names could be one file.

Why one object per vector: it is the simplest layout that many hosts can fill at once. A key
names its content (the same text through the same model gives the same vector), so writing an
object is idempotent and two writers of one key can never conflict; there is no index, no
manifest and no lock to keep, nothing to merge, and no object is ever rewritten except to
replace a damaged one. Reads and writes of a batch go out together (fsspec's `cat` and `pipe`
of many paths are concurrent requests on s3fs, gcsfs and adlfs).

What it costs: one PUT per vector newly paid for, and one GET per vector the local cache
lacks (a miss is a GET answered 404). Object stores bill requests, not bytes, at this size:
a million new vectors are a million PUTs.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import uuid
from pathlib import Path

from pipeline.config import first_line
from pipeline.errors import CacheError, EmbedpipeError
from pipeline.remote import filesystem

_TEXT_DIGEST = 18  # bytes of a text's sha256, as in the local cache's compact keys
_NAMESPACE_DIGEST = 6
# Requests in flight per bulk call on an async store (s3fs, gcsfs, adlfs). fsspec's default, over a
# thousand, costs more CPU in asyncio's waits (measured: 15% more per object on moto) and buys nothing:
# 64 requests of ~20 ms each already outrun the ~1.5 ms of client CPU each request costs.
_IN_FLIGHT = 64
_WRITER = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"  # a local tier's temporary names
MARKER = ".embedpipe-shared-cache"
# The marker's content is fixed, like a vector's: hosts opening the tier at once write the same bytes.
_MARKER_BYTES = b"embedpipe shared vector cache: <namespace>-<dimensions>/<2 hex>/<sha256 of the text>\n"


class SharedTier:
    """Vectors' bytes by text, for one namespace and size, under `url`. Opening it writes and
    reads back a marker: a wrong bucket, a missing permission or a bad endpoint is a
    `CacheError` naming `cache.shared_path` before the run spends anything."""

    def __init__(self, url: str, namespace: str, dimensions: int):
        self.url = url.rstrip("/")
        try:
            self._fs, root = filesystem(self.url)
        except EmbedpipeError as exc:
            raise CacheError(f"cache.shared_path {exc}") from None
        self._local = "file" in _protocols(self._fs)
        if getattr(self._fs, "max_concurrency", 1) > 1:  # s3fs: it would HEAD each object first, to split large
            self._fs.max_concurrency = 1  # ones; a vector is a few KB, and the HEAD doubles the requests
        self._root = root.rstrip("/")
        self._made: set[Path] = set()  # a local tier's directories, made already
        self._batching = {"batch_size": _IN_FLIGHT} if getattr(self._fs, "async_impl", False) else {}
        self._dir = f"{self._root}/{_hex(namespace.encode(), _NAMESPACE_DIGEST)}-{dimensions}"
        self._check()

    def paths(self, texts: list[str]) -> list[str]:
        """Where each text's vector is kept (paths within the file system, no protocol)."""
        names = [_hex(text.encode(), _TEXT_DIGEST) for text in texts]
        return [f"{self._dir}/{name[:2]}/{name}" for name in names]

    def get_many(self, texts: list[str]) -> dict[str, bytes]:
        """The stored bytes of those `texts` that have an object, fetched together; missing
        objects are left out. Any other failure is a `CacheError`."""
        if not texts:
            return {}
        by_path = dict(zip(self.paths(texts), texts))
        try:
            fetched = (
                _read_local(list(by_path))
                if self._local
                else self._fs.cat(list(by_path), on_error="return", **self._batching)
            )
        except (OSError, ValueError) as exc:
            raise self._error("read", len(by_path), exc) from None
        found = {}
        for path, value in fetched.items():
            if isinstance(value, bytes):
                found[by_path[path]] = value
            elif not isinstance(value, FileNotFoundError):
                raise self._error("read", len(by_path), value)
        return found

    def put_many(self, raws: dict[str, bytes]) -> None:
        """Store each text's bytes, all at once; a `CacheError` if any could not be written."""
        objects = dict(zip(self.paths(list(raws)), raws.values()))
        try:
            if self._local:
                for path, raw in objects.items():
                    _write_whole(Path(path), raw, self._made)
            else:
                self._fs.pipe(objects, **self._batching)
        except (OSError, ValueError) as exc:
            raise self._error("write", len(objects), exc) from None

    def _check(self) -> None:
        marker = f"{self._root}/{MARKER}"
        try:
            if self._local:
                _write_whole(Path(marker), _MARKER_BYTES)
            else:  # never makedirs: on s3 that would create a bucket where a name was mistyped
                self._fs.pipe_file(marker, _MARKER_BYTES)
            if self._fs.cat_file(marker) != _MARKER_BYTES:
                raise OSError(f"{MARKER} read back differs from what was written")
        except (OSError, ValueError) as exc:
            raise CacheError(
                f"cache.shared_path {self.url}: cannot write and read back a marker there "
                f"({type(exc).__name__}: {first_line(exc)}); check the bucket or directory, its permissions, "
                "and the credentials and endpoint in the environment (e.g. AWS_ENDPOINT_URL)"
            ) from None

    def _error(self, action: str, count: int, exc: Exception) -> CacheError:
        return CacheError(
            f"cache.shared_path {self.url}: cannot {action} {count:,} vectors ({type(exc).__name__}: "
            f"{first_line(exc)}); check the store is reachable, or unset cache.shared_path to run on the local cache"
        )


def _read_local(paths: list[str]) -> dict[str, bytes | Exception]:
    """As fsspec's `cat(paths, on_error="return")`, at a third of its cost for a missing file."""
    found: dict[str, bytes | Exception] = {}
    for path in paths:
        try:
            with open(path, "rb") as file:
                found[path] = file.read()
        except OSError as exc:
            found[path] = exc
    return found


def _write_whole(path: Path, raw: bytes, made: set[Path] | None = None) -> None:
    """Write a file that readers (other hosts, over NFS) see whole or not at all: a hidden name
    no other writer uses (host, process, thread), then renamed. `made`: directories known to exist."""
    if made is None or path.parent not in made:
        path.parent.mkdir(parents=True, exist_ok=True)
        if made is not None:
            made.add(path.parent)
    partial = path.with_name(f".{path.name}.{_WRITER}.{threading.get_ident()}")
    try:
        partial.write_bytes(raw)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _hex(data: bytes, size: int) -> str:
    return hashlib.sha256(data).digest()[:size].hex()


def _protocols(fs) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
