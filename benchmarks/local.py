"""Every local backend against torch fp32 on the same chunks, in one run. A benchmark, not a test.

    .venv/bin/python -m benchmarks.local                 # the quickstart corpus and 20,000 generated rows
    .venv/bin/python -m benchmarks.local --rows 5000 --torch-rows 1000
    .venv/bin/python -m benchmarks.local --device cuda   # on a GPU: the backends that run there

Chunks/s through `LocalEmbedder.embed` (what a run calls: batches of 256, the WordPiece check
included), after a warm-up, timed in 8 blocks taken in turn with the other backends (a change in
the machine's load falls on all alike); mean and min cosine to torch's vector of the same chunk;
recall@10: how many of a chunk's 10 nearest neighbours by torch's vectors a backend also ranks in
its 10 nearest. Torch (and onnx fp32, as slow) embed only the first `--torch-rows` generated
rows; agreement is measured on those, speed of the faster backends on all rows.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.config import EmbeddingConfig
from pipeline.errors import EmbedpipeError
from pipeline.providers.local import LocalEmbedder
from pipeline.providers.local.backends import BACKENDS, backend_names
from pipeline.providers.local.devices import resolve_devices
from pipeline.text.chunking import chunk_texts
from pipeline.text.normalise import normalise_paragraphs

ROOT = Path(__file__).resolve().parent.parent
SLOW = {"torch", "onnx"}  # embed only the first --torch-rows of the generated corpus
BLOCKS = 8  # each backend's texts are timed in this many blocks, taken in turn


def quickstart_chunks(max_tokens: int = 192, overlap: int = 32) -> list[str]:
    """The quickstart's docstrings cut as `make run` cuts them (configs/quickstart.yaml)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from quickstart import collect_docstrings

    texts = [text for text in collect_docstrings()["text"].to_list() if text and text.strip()]
    chunked = chunk_texts([normalise_paragraphs(text) for text in texts], max_tokens, overlap)
    return list(dict.fromkeys(chunk.text for chunks in chunked for chunk in chunks))


def generated_rows(rows: int, source: list[str], seed: int = 7) -> list[str]:
    """`rows` short documents on a few hundred topics, in the vocabulary of `source`."""
    rng = random.Random(seed)
    words = sorted({w for text in source for w in text.lower().split() if w.isalpha()})
    topics = [rng.sample(words, 12) for _ in range(300)]
    docs = []
    for _ in range(rows):
        topic = rng.choice(topics)
        sentences = [" ".join(rng.choice(topic if rng.random() < 0.6 else words) for _ in range(rng.randint(6, 18)))
                     for _ in range(rng.randint(1, 4))]  # fmt: skip
        docs.append(". ".join(s.capitalize() for s in sentences) + ".")
    return docs


def interleaved_seconds(embedders: dict, samples: dict, blocks: int = BLOCKS) -> tuple[dict, dict]:
    """Each backend's vectors for its sample and the seconds they took, timed block by block in
    turn (a block of each backend, then the next block of each), so a change in the machine's load
    falls on every backend alike."""
    seconds = dict.fromkeys(embedders, 0.0)
    vectors: dict[str, list] = {name: [] for name in embedders}
    for name, embedder in embedders.items():
        embedder.embed(samples[name][:64], [1] * min(64, len(samples[name])))  # warm-up
    for block in range(blocks):
        for name, embedder in embedders.items():
            texts = np.array_split(np.array(samples[name], dtype=object), blocks)[block].tolist()
            started = time.perf_counter()
            vectors[name].append(embedder.embed(texts, [1] * len(texts)))
            seconds[name] += time.perf_counter() - started
    return {name: np.concatenate(parts) for name, parts in vectors.items()}, seconds


def recall_at_10(vectors: np.ndarray, expected: np.ndarray) -> float:
    def neighbours(v: np.ndarray) -> np.ndarray:
        similarity = v @ v.T
        np.fill_diagonal(similarity, -np.inf)
        return np.argpartition(-similarity, 10, axis=1)[:, :10]

    found, wanted = neighbours(vectors), neighbours(expected)
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, wanted)]))


def runnable_backends(device: str) -> list[str]:
    """The backends that run on `device`, torch (the reference) first; the others are said and skipped."""
    devices = tuple(resolve_devices(device))
    names = []
    for name in backend_names():
        why_not = BACKENDS[name].cannot_run_on(devices)
        if why_not:
            print(f"skipped {name} on {device}: {why_not}", file=sys.stderr)
        else:
            names.append(name)
    return names


def compare(corpus: str, texts: list[str], agree_on: int, models: Path, device: str) -> list[list[str]]:
    """One table row per backend: speed on `texts` (the slow ones on the first `agree_on`), agreement on those."""
    embedders = {
        name: LocalEmbedder(EmbeddingConfig(backend=name, device=device, models_path=str(models)))
        for name in runnable_backends(device)
    }
    samples = {name: texts[:agree_on] if name in SLOW else texts for name in embedders}
    vectors, seconds = interleaved_seconds(embedders, samples)
    reference, torch_speed = vectors["torch"], len(samples["torch"]) / seconds["torch"]
    results = []
    for name, embedder in embedders.items():
        embedder.close()
        speed = len(samples[name]) / seconds[name]
        agree = vectors[name][:agree_on]
        cosines = np.sum(agree * reference, axis=1)
        results.append([corpus, name, f"{len(samples[name]):,}", f"{seconds[name]:.1f}", f"{speed:,.0f}",
                        f"{speed / torch_speed:.1f}", f"{cosines.mean():.4f}", f"{cosines.min():.4f}",
                        f"{recall_at_10(agree, reference):.3f}"])  # fmt: skip
        print(" | ".join(results[-1]), file=sys.stderr, flush=True)
    return results


def main() -> None:
    """Print the comparison as a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="generated rows")
    parser.add_argument("--torch-rows", type=int, default=2_000, help="generated rows torch and onnx embed")
    parser.add_argument("--device", default="cpu", help="embedding.device for every backend (cpu, cuda, cuda:N)")
    args = parser.parse_args()
    try:
        resolve_devices(args.device)  # a device this machine lacks is one line, before any preparing
    except EmbedpipeError as exc:
        sys.exit(f"benchmarks.local: {exc}")
    with tempfile.TemporaryDirectory() as models:  # prepared here once, by the first call of each backend
        quickstart = quickstart_chunks()
        started = time.perf_counter()
        for name in backend_names():  # preparing is once per machine: kept out of the timings
            LocalEmbedder(EmbeddingConfig(backend=name, device="cpu", models_path=models)).close()
        print(f"prepared every backend in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        rows = compare("quickstart", quickstart, len(quickstart), Path(models), args.device)
        generated = generated_rows(args.rows, quickstart)
        rows += compare(f"generated {args.rows:,}", generated, args.torch_rows, Path(models), args.device)
    header = ["corpus", "backend", "chunks", "seconds", "chunks/s", "× torch", "mean cos", "min cos", "recall@10"]
    print("| " + " | ".join(header) + " |\n|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
