"""The shared cache tier (`cache.shared_path`): what one host stores, another host with its own
local cache reads; a damaged object is a miss; a tier that cannot be reached stops at once."""

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from pipeline.cache.claims import Claims
from pipeline.cache.shared_tier import SharedTier
from pipeline.cache.tiered import TieredCache, open_cache
from pipeline.cache.vectors import VectorCache
from pipeline.config import CacheConfig
from pipeline.errors import CacheError

TEXTS = [f"text {i}" for i in range(30)]
DIMS = 4


@pytest.fixture(params=["directory", "s3"])
def tier_url(request, tmp_path):
    """A shared tier: a directory (as over NFS), or a prefix in a moto S3 bucket."""
    if request.param == "directory":
        return str(tmp_path / "shared")
    _, bucket = request.getfixturevalue("s3")
    return f"s3://{bucket}/vectors"


def vectors_of(texts: list[str]) -> dict[str, np.ndarray]:
    return {t: np.arange(1, DIMS + 1, dtype=np.float32) * (i + 1) for i, t in enumerate(texts)}


def host(tmp_path, name: str, tier_url: str) -> TieredCache:
    """A host's cache: its own local directory in front of the shared tier."""
    return TieredCache(tmp_path / name, "openai:m:4", DIMS, tier_url)


def test_what_one_host_stores_another_reads_and_keeps_locally(tmp_path, tier_url):
    first, second = host(tmp_path, "a", tier_url), host(tmp_path, "b", tier_url)
    first.put_many(vectors_of(TEXTS[:20]))
    first.flush_shared()
    found = second.lookup(TEXTS)
    assert sorted(found.vectors) == sorted(TEXTS[:20]) and not found.bad
    assert all(np.array_equal(found.vectors[t], v) for t, v in vectors_of(TEXTS[:20]).items())
    assert (first.shared_writes, second.shared_hits) == (20, 20)
    assert sorted(VectorCache.lookup(second, TEXTS).vectors) == sorted(TEXTS[:20])  # now in b's local cache too
    second.lookup(TEXTS)
    assert second.shared_hits == 20  # the second lookup stays on the host
    first.close(), second.close()


def test_objects_are_content_addressed_by_namespace_size_and_text(tmp_path):
    tier = SharedTier(str(tmp_path / "shared"), "openai:m:4", DIMS)
    path = tier.paths(["hello"])[0]
    namespace, fan_out, name = path.split("/")[-3:]
    assert path.startswith(str(tmp_path / "shared")) and namespace.endswith("-4") and len(namespace) == 14
    assert name.startswith(fan_out) and len(fan_out) == 2 and len(name) == 36
    assert SharedTier(str(tmp_path / "shared"), "openai:m:8", 8).paths(["hello"])[0] != path


DAMAGE = {
    "wrong size": b"\x00\x00\x80\x3f" * (DIMS - 1),
    "not finite": np.array([1, np.nan, 1, 1], dtype="<f4").tobytes(),
    "zero": bytes(4 * DIMS),
}


@pytest.mark.parametrize(
    "tier_url, damage",
    [("directory", "wrong size"), ("directory", "not finite"), ("directory", "zero"), ("s3", "not finite")],
    indirect=["tier_url"],
)
def test_a_damaged_object_is_a_miss_and_reported_bad(tmp_path, tier_url, damage):
    raw = DAMAGE[damage]
    first = host(tmp_path, "a", tier_url)
    first.put_many(vectors_of(TEXTS[:3]))
    first.close()
    first.shared._fs.pipe_file(first.shared.paths([TEXTS[1]])[0], raw)
    second = host(tmp_path, "b", tier_url)
    found = second.lookup(TEXTS[:3])
    assert sorted(found.vectors) == [TEXTS[0], TEXTS[2]] and found.bad == [TEXTS[1]]
    second.close()


@pytest.mark.parametrize("where", ["missing bucket", "a file, not a directory"])
def test_a_tier_that_cannot_be_written_is_one_line_naming_the_key(tmp_path, s3, where):
    url = "s3://no-such-bucket-embedpipe/vectors" if where == "missing bucket" else str(tmp_path / "file")
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(CacheError) as error:
        open_cache(CacheConfig(path=str(tmp_path / "local"), shared_path=url), _Embedder())
    message = str(error.value)
    assert message.startswith(f"cache.shared_path {url}: cannot write and read back") and "\n" not in message


def test_a_process_waiting_on_a_claim_sees_the_vector_another_host_stored(tmp_path):
    url = str(tmp_path / "shared")
    here, elsewhere = host(tmp_path, "a", url), host(tmp_path, "b", url)
    here.claim_many(["wanted"], "a partition in another process", seconds=2)  # lapses: no hang if unseen
    claims = Claims(here, lambda texts: here.lookup(texts).vectors, owner="me")
    elsewhere.put_many(vectors_of(["wanted"]))  # on another host: not in our local cache
    elsewhere.flush_shared()
    found = claims.stored_elsewhere(["wanted"])
    assert np.array_equal(found["wanted"], vectors_of(["wanted"])["wanted"])
    here.close(), elsewhere.close()


class ClaimBoard:
    """Claims kept in memory, as the coordinator on a Dask scheduler keeps them for all hosts."""

    def __init__(self):
        self.owners: dict[str, str] = {}

    def claim_many(self, texts, owner, seconds):
        return [text for text in texts if self.owners.setdefault(text, owner) == owner]

    def release_many(self, texts, owner):
        for text in texts:
            if self.owners.get(text) == owner:
                del self.owners[text]

    def claimed(self, texts):
        return {text for text in texts if text in self.owners}


def test_a_host_waiting_on_a_claim_finds_the_vector_once_the_claim_is_let_go(tmp_path, monkeypatch):
    url, board = str(tmp_path / "shared"), ClaimBoard()
    here, there = host(tmp_path, "a", url), host(tmp_path, "b", url)
    claims_here = Claims(here, lambda texts: here.lookup(texts).vectors, owner="a", store=board)
    claims_there = Claims(there, lambda texts: there.lookup(texts).vectors, owner="b", store=board)
    upload = here.shared.put_many
    monkeypatch.setattr(here.shared, "put_many", lambda raws: (time.sleep(0.5), upload(raws)))  # a slow store
    mine, _, _ = claims_here.claim_across(["wanted"])
    assert claims_there.claim_across(["wanted"])[1] == ["wanted"]  # claimed elsewhere: waits, does not send
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(claims_there.stored_elsewhere, ["wanted"])
        time.sleep(0.2)  # it has looked in the tier, and missed
        here.put_many(vectors_of(["wanted"]))  # paid for here; its upload is on the way
        claims_here.release_across(mine)
        found = waiting.result(timeout=10)
    assert np.array_equal(found["wanted"], vectors_of(["wanted"])["wanted"])  # not left to be paid again
    here.close(), there.close()


def test_a_claim_won_just_after_another_host_stored_the_text_takes_its_vector(tmp_path):
    url, board = str(tmp_path / "shared"), ClaimBoard()
    here, there = host(tmp_path, "a", url), host(tmp_path, "b", url)
    claims = Claims(here, lambda texts: here.lookup(texts).vectors, owner="a", store=board)
    assert not here.lookup(["wanted"]).vectors  # missed: not asked again for a second
    there.put_many(vectors_of(["wanted"]))  # another host paid for it, and let its claim go
    there.flush_shared()
    mine, elsewhere, stored = claims.claim_across(["wanted"])
    assert (mine, elsewhere, list(stored)) == ([], [], ["wanted"])  # read from the tier, not paid again
    here.close(), there.close()


def test_without_shared_path_the_cache_is_local_and_fsspec_never_loads(tmp_path):
    program = (
        "import sys; from pipeline.cache.tiered import open_cache; from pipeline.config import CacheConfig\n"
        "import pipeline.run.steps, pipeline.run.workers\n"
        "class E: cache_namespace, dimensions = 'ns', 4\n"
        f"cache = open_cache(CacheConfig(path={str(tmp_path / 'local')!r}), E())\n"
        "print(type(cache).__name__, 'fsspec' in sys.modules)"
    )
    ran = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert ran.stdout.split() == ["VectorCache", "False"]


class _Embedder:
    cache_namespace, dimensions = "openai:m:4", DIMS
