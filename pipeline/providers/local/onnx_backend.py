"""The model's transformer exported to ONNX and run by onnxruntime, in fp32 or with int8 weights;
tokenised by its own tokenizer, pooled and normalised as its sentence-transformers config says."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.providers.local.backend import Backend, ModelSpec, by_length
from pipeline.providers.local.devices import batch_size_for
from pipeline.providers.local.exports import ONNX_FILE, export_onnx, prepared, quantize_int8


class OnnxBackend(Backend):
    """The fp32 ONNX export: torch's vectors to float rounding."""

    name = "onnx"
    namespace_suffix = ":onnx"
    describes = "onnxruntime, fp32"

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        import onnxruntime
        from tokenizers import Tokenizer

        folder = self.prepare(spec)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # its warnings about unused initializers are not the user's business
        providers = ["CUDAExecutionProvider"] if spec.devices[0].startswith("cuda") else ["CPUExecutionProvider"]
        self.session = onnxruntime.InferenceSession(str(folder / ONNX_FILE), options, providers=providers)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(spec.max_seq_length)
        self.tokenizer.enable_padding(pad_id=self.tokenizer.token_to_id("[PAD]") or 0)
        hidden = spec.transformer.get("hidden_size", 768)
        heads = spec.transformer.get("num_attention_heads", 12)
        self.batch_size = batch_size_for(spec.devices[0], spec.max_seq_length, hidden, heads)
        self._dimensions = hidden

    @classmethod
    def cannot_run_on(cls, devices: tuple[str, ...]) -> str | None:
        import onnxruntime

        if len(devices) > 1:
            return "it runs on one device; backend torch spreads over several GPUs"
        if devices[0].startswith("cuda") and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return "this onnxruntime has no CUDA provider (install onnxruntime-gpu)"
        return None

    @classmethod
    def prepare(cls, spec: ModelSpec) -> Path:
        return prepared(spec.models_dir / f"{spec.name}-onnx", lambda into: export_onnx(spec.path, into))

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        for batch in by_length(texts, self.batch_size):
            encodings = self.tokenizer.encode_batch([texts[i] for i in batch])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            out[batch] = self.pooled(ids, mask)
        return out

    def pooled(self, ids: np.ndarray, mask: np.ndarray | None = None, normalise: bool = True) -> np.ndarray:
        """One pooled vector per row of token `ids` (`mask`: 1 for real tokens; None: all real)."""
        mask = np.ones_like(ids) if mask is None else mask
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = self.session.run(None, feeds)[0]
        if self.spec.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        if not normalise:
            return pooled
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    @property
    def dimensions(self) -> int:
        return self._dimensions


class OnnxInt8Backend(OnnxBackend):
    """The ONNX export with its weights dynamically quantized to int8: faster on a CPU, a little less exact."""

    name = "onnx-int8"
    namespace_suffix = ":onnx-int8"
    describes = "onnxruntime, int8 weights"

    @classmethod
    def cannot_run_on(cls, devices: tuple[str, ...]) -> str | None:
        if any(device.startswith("cuda") for device in devices):
            return "int8 quantized for the CPU; on a GPU use onnx or torch"
        return super().cannot_run_on(devices)

    @classmethod
    def prepare(cls, spec: ModelSpec) -> Path:
        fp32 = OnnxBackend.prepare(spec)
        return prepared(spec.models_dir / f"{spec.name}-onnx-int8", lambda into: quantize_int8(fp32, into))
