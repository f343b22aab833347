"""`embedpipe cache check | repair` and `embedpipe run` on a damaged cache, as a user runs them."""

from pipeline.config import load_config
from pipeline.providers import get_embedder
from tests.conftest import write_parquet
from tests.flows.test_cli import embedpipe
from tests.pipeline.cache.test_vectors import damaged_cache


def write_config(tmp_path, server, source):
    path = tmp_path / "run.yaml"
    path.write_text(
        f"source:\n  path: {source}\n"
        "embedding:\n  provider: openai\n  model: text-embedding-3-small\n  dimensions: 16\n"
        f"  base_url: {server.base_url}\n  api_key_env: OPENAI_API_KEY\n"
        f"cache:\n  path: {tmp_path / 'cache'}\noutput:\n  path: {tmp_path / 'out'}\n"
    )
    return path


def test_a_damaged_cache_stops_a_run_with_one_line_and_check_and_repair_mend_it(tmp_path, fake_openai, prefect_home):
    texts = [f"text {i}" for i in range(3000)]
    source = write_parquet(tmp_path / "docs.parquet", {"id": list(range(len(texts))), "text": texts})
    config = write_config(tmp_path, fake_openai, source)
    namespace = get_embedder(load_config(str(config)).embedding, "sk-test").cache_namespace
    damaged_cache(tmp_path / "cache", namespace, 16, texts=len(texts))

    run = embedpipe(["run", str(config)], prefect_home, tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"embedpipe: error: cache.path {tmp_path / 'cache'} is damaged (database disk image is malformed): " \
           f"run `embedpipe cache repair {tmp_path / 'cache'}`" in run.stderr
    assert "Traceback" not in run.stdout + run.stderr

    check = embedpipe(["cache", "check", str(config)], prefect_home, tmp_path)
    assert check.returncode == 1, check.stderr
    assert f"cache {tmp_path / 'cache'}: damaged" in check.stdout and f"embedpipe cache repair {config}" in check.stdout

    repair = embedpipe(["cache", "repair", str(config)], prefect_home, tmp_path)
    assert repair.returncode == 0, repair.stderr
    assert "repaired: kept" in repair.stdout and "unreadable rows" in repair.stdout

    again = embedpipe(["cache", "check", str(tmp_path / "cache")], prefect_home, tmp_path)
    assert again.returncode == 0 and f"cache {tmp_path / 'cache'}: clean" in again.stdout, again.stdout + again.stderr
    assert embedpipe(["run", str(config)], prefect_home, tmp_path).returncode == 0


def test_cache_check_of_nothing_is_one_line(tmp_path, prefect_home):
    result = embedpipe(["cache", "check", str(tmp_path / "nowhere")], prefect_home, tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no such file or directory" in result.stderr
