"""`embedding.backend: auto`: try every backend once on a sample of the input, keep the fastest whose
vectors agree with torch fp32's, and remember the choice for this model on this machine."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pipeline.errors import ProviderError
from pipeline.providers.local.backend import Backend, ModelSpec
from pipeline.providers.local.backends import BACKENDS, REFERENCE
from pipeline.unit_vectors import l2_normalise

log = logging.getLogger("embedpipe")

PROBE_TEXTS = 128  # enough to time and compare; a few seconds on two cores
PROBE_CHARS = 1500  # a sample text's length: about what one chunk holds
CHOICES_FILE = "backend-choices.json"
# where a run gives no texts of its own (a query, an estimate): varied enough to time and compare
FALLBACK_SAMPLE = [
    f"{subject} {verb} {thing}."
    for subject in ("The committee", "A small dog", "Our quarterly revenue", "The kernel scheduler")
    for verb in ("reviewed", "ignored", "depends on", "was compared with")
    for thing in ("the proposal to rebuild the bridge", "a list of words split on whitespace", "interest rates")
]


@dataclass(frozen=True)
class Choice:
    """The backend a run uses, and why, in words for its summary."""

    backend: str
    reason: str


def remembered(spec: ModelSpec, min_cosine: float) -> Choice | None:
    """The choice `auto` made before for this model, devices and tolerance on this machine."""
    entry = _read(spec.models_dir / CHOICES_FILE).get(_key(spec, min_cosine))
    if not entry or entry.get("backend") not in BACKENDS:
        return None
    return Choice(entry["backend"], f"auto, as chosen on {entry['at']}: {entry['reason']}")


def choose_backend(spec: ModelSpec, sample: list[str], min_cosine: float) -> tuple[Choice, Backend]:
    """Time each backend on `sample` (its first PROBE_TEXTS texts, cut to PROBE_CHARS) and pick the
    fastest whose mean cosine to torch's vectors is at least `min_cosine`; remember it. Returns the
    choice and that backend, loaded."""
    texts = [text[:PROBE_CHARS] for text in sample if text and text.strip()][:PROBE_TEXTS] or FALLBACK_SAMPLE
    reference = REFERENCE(spec)
    expected, reference_seconds = _timed(reference, texts)
    loaded: dict[str, Backend] = {REFERENCE.name: reference}
    measured = {REFERENCE.name: (1.0, 1.0)}  # speed relative to torch, mean cosine to torch
    skipped = []
    for name, backend_class in BACKENDS.items():
        why_not = backend_class.cannot_run_on(spec.devices)
        if backend_class is REFERENCE or why_not:
            skipped += [f"{name} skipped: {why_not}"] if why_not else []
            continue
        try:
            loaded[name] = backend_class(spec)
        except ProviderError as exc:  # this model cannot run there (say, no onnx export of it): try the others
            skipped.append(f"{name} skipped: {exc}")
            continue
        vectors, seconds = _timed(loaded[name], texts)
        measured[name] = (reference_seconds / max(seconds, 1e-9), _mean_cosine(vectors, expected))
    agreeing = [name for name, (_speed, cosine) in measured.items() if cosine >= min_cosine]
    best = max(agreeing, key=lambda name: measured[name][0])
    for name, backend in loaded.items():
        if name != best:
            backend.close()
    choice = Choice(best, _reason(best, measured, min_cosine, len(texts), skipped))
    _remember(spec, min_cosine, choice)
    log.info("embedding.backend auto chose %s", choice.reason)
    return choice, loaded[best]


def _timed(backend: Backend, texts: list[str]) -> tuple[np.ndarray, float]:
    backend.encode(texts[:4])  # the first call pays for allocations and lazy set-up
    started = time.perf_counter()
    vectors = backend.encode(texts)
    return vectors, time.perf_counter() - started


def _mean_cosine(vectors: np.ndarray, expected: np.ndarray) -> float:
    return float(np.mean(np.sum(l2_normalise(vectors) * l2_normalise(expected), axis=1)))


def _reason(best: str, measured: dict, min_cosine: float, texts: int, skipped: list[str]) -> str:
    def described(name: str) -> str:
        speed, cosine = measured[name]
        return f"{name} {speed:.1f}x torch's speed, mean cosine {cosine:.3f}"

    others = [described(name) for name in measured if name != best] + skipped
    return f"{described(best)} (fastest with mean cosine >= {min_cosine} on {texts} sample texts); " + "; ".join(others)


def _key(spec: ModelSpec, min_cosine: float) -> str:
    """This model on this machine: its processor, devices and the libraries that run it."""
    import onnxruntime
    import torch

    return json.dumps([spec.name, list(spec.devices), min_cosine, platform.machine(), _processor(), os.cpu_count(),
                       torch.__version__, onnxruntime.__version__])  # fmt: skip


def _processor() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")


def _remember(spec: ModelSpec, min_cosine: float, choice: Choice) -> None:
    path = spec.models_dir / CHOICES_FILE
    choices = _read(path)
    at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    choices[_key(spec, min_cosine)] = {"backend": choice.backend, "reason": choice.reason, "at": at}
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staged.write_text(json.dumps(choices, indent=1), encoding="utf-8")
    os.replace(staged, path)  # a reader sees the old file or the new one, never half of one


def _read(path: Path) -> dict:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
