"""`embedding.backend: auto` picks the fastest backend that agrees with torch, says why, and
remembers it for this model on this machine. Backends here are stand-ins of set speed and agreement."""

import time

import numpy as np
import pytest

from pipeline.config import Config
from pipeline.providers.local import choice
from pipeline.providers.local.backend import Backend, ModelSpec
from pipeline.run.report import summary_lines
from pipeline.run.steps import run_pipeline
from tests.conftest import write_parquet

SAMPLE = [f"text number {i}" for i in range(16)]


def stand_in(name: str, seconds_per_text: float, cosine: float) -> type[Backend]:
    """A backend taking `seconds_per_text`, whose vectors have `cosine` with the reference's."""

    class StandIn(Backend):
        namespace_suffix = f":{name}"
        describes = name

        def encode(self, texts):
            time.sleep(seconds_per_text * len(texts))
            return np.tile([cosine, np.sqrt(1 - cosine**2), 0.0], (len(texts), 1)).astype(np.float32)

        @property
        def dimensions(self):
            return 3

    StandIn.name = name
    return StandIn


@pytest.fixture
def backends(monkeypatch):
    def install(**cosines_and_speeds):
        made = {name.replace("_", "-"): stand_in(name.replace("_", "-"), *v) for name, v in cosines_and_speeds.items()}
        monkeypatch.setattr(choice, "BACKENDS", made)
        monkeypatch.setattr(choice, "REFERENCE", made["torch"])

    return install


def spec(tmp_path) -> ModelSpec:
    return ModelSpec(tmp_path / "model", "minilm", tmp_path / "models", ("cpu",))


SPEEDS = dict(torch=(0.01, 1.0), onnx=(0.005, 0.9999), onnx_int8=(0.002, 0.995), static=(0.0, 0.80))


@pytest.mark.parametrize(
    ("backends_measured", "min_cosine", "chosen"),
    [
        (SPEEDS, 0.99, "onnx-int8"),
        (SPEEDS, 0.999, "onnx"),
        (SPEEDS, 0.5, "static"),
        ({**SPEEDS, "onnx_int8": (0.001, 0.97)}, 0.99, "onnx"),
        ({**SPEEDS, "onnx": (0.02, 0.9999), "onnx_int8": (0.002, 0.9)}, 0.99, "torch"),
    ],
)
def test_auto_takes_the_fastest_backend_within_the_tolerance(backends, tmp_path, backends_measured, min_cosine, chosen):
    backends(**backends_measured)
    picked, loaded = choice.choose_backend(spec(tmp_path), SAMPLE, min_cosine)
    assert picked.backend == chosen and loaded.name == chosen
    assert picked.reason.startswith(f"{chosen} ") and f"fastest with mean cosine >= {min_cosine}" in picked.reason


def test_the_reason_gives_every_backends_speed_and_agreement(backends, tmp_path):
    backends(**SPEEDS)
    reason = choice.choose_backend(spec(tmp_path), SAMPLE, 0.99)[0].reason
    assert "mean cosine 0.995" in reason and "static" in reason and "mean cosine 0.800" in reason


def test_the_choice_is_remembered_for_this_model_machine_and_tolerance(backends, tmp_path):
    backends(**SPEEDS)
    picked, _ = choice.choose_backend(spec(tmp_path), SAMPLE, 0.99)
    again = choice.remembered(spec(tmp_path), 0.99)
    assert again is not None and again.backend == picked.backend and "as chosen on" in again.reason
    assert choice.remembered(spec(tmp_path), 0.999) is None  # another tolerance probes again


def test_a_sample_of_blank_texts_falls_back_to_built_in_sentences(backends, tmp_path):
    backends(**SPEEDS)
    picked, _ = choice.choose_backend(spec(tmp_path), ["", "  "], 0.99)
    assert f"on {len(choice.FALLBACK_SAMPLE)} sample texts" in picked.reason


def test_a_run_on_auto_chooses_on_its_first_texts_says_so_and_the_next_run_does_not_probe(models_dir, tmp_path):
    texts = [f"Document {i}: the committee reviewed the proposal to rebuild bridge number {i}." for i in range(40)]
    source = write_parquet(tmp_path / "in" / "docs.parquet", {"id": list(range(40)), "text": texts})
    config = Config.model_validate(
        {
            "source": {"path": str(source)},
            "embedding": {"provider": "local", "backend": "auto", "models_path": str(models_dir)},
            "cache": {"path": str(tmp_path / "cache")},
            "output": {"path": str(tmp_path / "out")},
        }
    )
    for _ in range(2):  # the second from the remembered choice
        manifest = run_pipeline(config)
    (line,) = [line for line in summary_lines(manifest) if line.startswith("  backend")]
    assert "as chosen on" in line and "on 40 sample texts" in line and manifest["backend"] in line
