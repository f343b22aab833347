"""Models made once from the packaged weights and kept on disk: an ONNX export, its int8
quantization, and a static (model2vec) distillation. Nothing is downloaded.

Each is built in a temporary folder beside its place and renamed into it when whole, so two
processes, or a run killed half way, never leave a half model where a run would load it.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.errors import ProviderError

log = logging.getLogger("embedpipe")

ONNX_FILE = "model.onnx"
ONNX_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
DISTILL_BATCH = 1024  # one-token texts per forward pass while distilling
SIF_COEFFICIENT = 1e-4  # model2vec's default weighting of frequent tokens down
ABANDONED_AFTER_SECONDS = 3600  # a temporary folder older than this is no process's work in progress


def prepared(folder: Path, build: Callable[[Path], None]) -> Path:
    """`folder`, built by `build(tmp)` into a temporary folder and renamed into place unless it is there already."""
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    for abandoned in folder.parent.glob(f".{folder.name}.*.tmp"):  # a killed run's; one building now is younger
        if time.time() - abandoned.stat().st_mtime > ABANDONED_AFTER_SECONDS:
            shutil.rmtree(abandoned, ignore_errors=True)
    building = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp")
    building.mkdir()
    try:
        log.info("preparing the local model %s (once; kept for later runs)", folder.name)
        build(building)
        try:
            os.rename(building, folder)
        except OSError:
            if not folder.is_dir():  # not another process finishing first: a real failure
                raise
    except OSError as exc:
        raise ProviderError(f"embedding.models_path {folder.parent}: cannot write the model there ({exc})") from None
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return folder


def export_onnx(source: Path, into: Path) -> None:
    """The transformer of the sentence-transformers model at `source` as ONNX (fp32), beside
    a copy of its tokenizer and configuration: what the onnx backends load."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(source)).eval()
    if "token_type_ids" not in inspect.signature(model.forward).parameters:
        raise ProviderError(
            f"embedding.model {source}: the onnx export takes BERT-style models only; use backend torch"
        )
    example = torch.tensor([[101, 7592, 2088, 102], [101, 2088, 102, 0]])
    inputs = (example, (example > 0).long(), torch.zeros_like(example))
    axes = {name: {0: "batch", 1: "tokens"} for name in [*ONNX_INPUTS, "last_hidden_state"]}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python branches: the axes that vary are declared
        torch.onnx.export(
            _hidden_states(model), inputs, str(into / ONNX_FILE), input_names=ONNX_INPUTS,
            output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False,
        )  # fmt: skip
    _copy_model_files(source, into)


def quantize_int8(onnx_folder: Path, into: Path) -> None:
    """The fp32 export in `onnx_folder`, its weights dynamically quantized to int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it logs a hint about pre-processing to the root logger, every time
    try:
        # per channel: one scale per weight column; one per matrix drops the mean cosine to torch from 0.99 to 0.95
        quantize_dynamic(
            str(onnx_folder / ONNX_FILE), str(into / ONNX_FILE), weight_type=QuantType.QInt8, per_channel=True
        )
    finally:
        root.setLevel(level)
    _copy_model_files(onnx_folder, into)


def distill_static(encode_tokens: Callable[[np.ndarray], np.ndarray], source: Path, into: Path) -> None:
    """A model2vec static model made by model2vec's recipe: each WordPiece's vector is the model's
    mean-pooled output for [CLS] piece [SEP], weighted down by its Zipf frequency (SIF).
    model2vec's PCA is reduced to its centring: vectors stay in the transformer's 384-d space
    (comparable with torch's, the same output width), at recall@10 0.38 against 0.41 with PCA to
    256 dims and 0.33 uncentred (stdlib docstrings). `encode_tokens(ids)` runs the transformer
    on (n, 3) token ids: the ONNX export, several times torch's speed here."""
    from model2vec import StaticModel
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if cls is None or sep is None:
        raise ProviderError(f"embedding.backend static: {source} is no WordPiece (BERT) model; use onnx or torch")
    ids = np.arange(tokenizer.get_vocab_size(), dtype=np.int64)
    triples = np.stack([np.full_like(ids, cls), ids, np.full_like(ids, sep)], axis=1)
    vectors = np.concatenate([encode_tokens(triples[i : i + DISTILL_BATCH]) for i in range(0, len(ids), DISTILL_BATCH)])
    vectors -= vectors.mean(axis=0)  # what every piece shares says nothing about a text, and swamps an average
    rank_probability = 1 / np.arange(2, len(ids) + 2)  # token ids of a WordPiece vocabulary follow frequency
    rank_probability /= rank_probability.sum()
    vectors *= (SIF_COEFFICIENT / (SIF_COEFFICIENT + rank_probability))[:, None]
    tokenizer.no_truncation()
    tokenizer.no_padding()
    config = {"model_type": "model2vec", "architectures": ["StaticModel"], "hidden_dim": vectors.shape[1]}
    static = StaticModel(vectors=vectors.astype(np.float32), tokenizer=tokenizer, config=config, normalize=True)
    static.save_pretrained(str(into))


def _hidden_states(model):
    """`model` as a module whose one output is its last hidden state: what the export traces."""
    import torch

    class HiddenStates(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    return HiddenStates()


def _copy_model_files(source: Path, into: Path) -> None:
    """The tokenizer and the sentence-transformers configuration (pooling, normalising, input limit)."""
    for path in source.rglob("*.json"):
        (into / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, into / path.relative_to(source))
