"""The local backends by name: what `embedding.backend` may say, and what `auto` tries, in this order."""

from __future__ import annotations

from pipeline.providers.local.backend import Backend
from pipeline.providers.local.onnx_backend import OnnxBackend, OnnxInt8Backend
from pipeline.providers.local.static_backend import StaticBackend
from pipeline.providers.local.torch_backend import TorchBackend

REFERENCE = TorchBackend  # what `auto` measures the others against
BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (TorchBackend, OnnxBackend, OnnxInt8Backend, StaticBackend)}


def backend_names() -> list[str]:
    """Every name `embedding.backend` accepts besides auto."""
    return list(BACKENDS)
