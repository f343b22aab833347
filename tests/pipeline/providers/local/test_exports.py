"""A model is made once and appears whole or not at all: failures, races and killed runs leave no half model."""

import os
import threading
import time

import pytest

from pipeline.errors import ProviderError
from pipeline.providers.local.exports import ABANDONED_AFTER_SECONDS, prepared


def writes(text: str, delay: float = 0.0):
    def build(into):
        (into / "part-1").write_text(text)
        time.sleep(delay)
        (into / "part-2").write_text(text)

    return build


def test_a_failed_build_leaves_neither_the_model_nor_its_temporary_folder(tmp_path):
    def fails(into):
        (into / "part-1").write_text("half")
        raise OSError("disk full")

    with pytest.raises(ProviderError, match="cannot write the model there"):
        prepared(tmp_path / "models" / "m-onnx", fails)
    assert list((tmp_path / "models").iterdir()) == []


def test_a_model_already_made_is_not_made_again(tmp_path):
    prepared(tmp_path / "m-onnx", writes("first"))
    prepared(tmp_path / "m-onnx", writes("second"))
    assert (tmp_path / "m-onnx" / "part-2").read_text() == "first"


def test_two_builders_at_once_leave_one_whole_model(tmp_path):
    results = []
    threads = [threading.Thread(target=lambda t=t: results.append(prepared(tmp_path / "m", writes(t, 0.2))))
               for t in ("a", "b")]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [tmp_path / "m"] * 2 and sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert (tmp_path / "m" / "part-1").read_text() == (tmp_path / "m" / "part-2").read_text()


def test_a_killed_runs_temporary_folder_is_cleared_once_it_is_old(tmp_path):
    old, recent = tmp_path / ".m.dead.tmp", tmp_path / ".m.busy.tmp"
    for folder in (old, recent):
        folder.mkdir()
    os.utime(old, (time.time() - ABANDONED_AFTER_SECONDS - 1,) * 2)
    prepared(tmp_path / "m", writes("x"))
    assert not old.exists() and recent.exists()
