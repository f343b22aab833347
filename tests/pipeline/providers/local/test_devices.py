"""embedding.device on a machine with no GPU (this one) and, mocked, on machines with some."""

import pytest
import torch

from pipeline.config import EmbeddingConfig
from pipeline.errors import ProviderError
from pipeline.providers.local import LocalEmbedder, model_path
from pipeline.providers.local.backend import ModelSpec
from pipeline.providers.local.devices import batch_size_for, resolve_devices
from pipeline.providers.local.torch_backend import TorchBackend

GIB = 1024**3


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this machine has `n` GPUs, each with `free` bytes free."""

    def pretend(n: int, free: int = 80 * GIB) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 2 * free))

    return pretend


@pytest.mark.parametrize(
    ("setting", "visible", "expected"),
    [
        ("auto", 0, ["cpu"]),
        ("cpu", 2, ["cpu"]),
        ("auto", 2, ["cuda:0", "cuda:1"]),
        ("cuda", 1, ["cuda:0"]),
        ("cuda:1", 2, ["cuda:1"]),
        (["cuda:0", "cuda:2"], 4, ["cuda:0", "cuda:2"]),
    ],
)
def test_the_devices_a_setting_names(gpus, setting, visible, expected):
    gpus(visible)
    assert resolve_devices(setting) == expected


@pytest.mark.parametrize(
    ("setting", "visible", "message"),
    [
        ("cuda", 0, "embedding.device cuda: no GPU on this machine (torch sees none); set embedding.device: cpu"),
        ("cuda:0", 0, "embedding.device cuda:0: no GPU on this machine"),
        ("cuda:2", 2, "embedding.device cuda:2: this machine has 2 GPUs (cuda:0 to cuda:1)"),
        (["cpu", "cuda:0"], 1, "mix no cpu with GPUs"),
    ],
)
def test_a_device_this_machine_lacks_is_one_line_saying_so(gpus, setting, visible, message):
    gpus(visible)
    with pytest.raises(ProviderError, match=message.replace("(", r"\(").replace(")", r"\)")) as raised:
        resolve_devices(setting)
    assert "\n" not in str(raised.value)


def test_asking_this_cpu_only_machine_for_cuda_says_no_gpu_before_loading_anything(tmp_path):
    with pytest.raises(ProviderError, match="no GPU on this machine"):
        LocalEmbedder(EmbeddingConfig(device="cuda", backend="torch", models_path=str(tmp_path)))


@pytest.mark.parametrize(
    ("device", "free", "expected"),
    [("cpu", 0, 32), ("cuda:0", 80 * GIB, 1024), ("cuda:0", 8 * GIB, 128), ("cuda:0", GIB // 8, 32)],
)
def test_the_batch_grows_with_the_gpus_free_memory(gpus, device, free, expected):
    gpus(1, free)
    assert batch_size_for(device, max_seq_length=256, hidden_size=384, heads=12) == expected


@pytest.mark.parametrize(
    ("backend", "visible", "device", "message"),
    [
        ("onnx-int8", 1, "cuda", "int8 quantized for the CPU; on a GPU use onnx or torch"),
        ("onnx", 2, "cuda", "it runs on one device; backend torch spreads over several GPUs"),
    ],
)
def test_a_backend_that_cannot_use_the_devices_says_which_can(gpus, tmp_path, backend, visible, device, message):
    gpus(visible)
    with pytest.raises(ProviderError, match=f"embedding.backend {backend} on .*: {message}"):
        LocalEmbedder(EmbeddingConfig(backend=backend, device=device, models_path=str(tmp_path)))


class FakeSentenceTransformer:
    """Stands in for sentence-transformers where no GPU is: records the pool it is asked for."""

    pools: list = []

    def __init__(self, path, device):
        self.device = device
        self.max_seq_length = 256

    def start_multi_process_pool(self, devices):
        self.pools.append(list(devices))
        return {"devices": devices}

    def encode(self, texts, batch_size, convert_to_numpy, pool):
        return [[float(len(pool["devices"])), float(batch_size)]] * len(texts)

    def stop_multi_process_pool(self, pool):
        self.pools.remove(list(pool["devices"]))


def test_several_gpus_share_the_work_through_one_process_each(gpus, monkeypatch, tmp_path):
    import sentence_transformers

    gpus(2)
    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", FakeSentenceTransformer)
    backend = TorchBackend(ModelSpec.of(model_path("all-MiniLM-L6-v2"), "all-MiniLM-L6-v2", tmp_path, resolve_devices("cuda")))
    assert FakeSentenceTransformer.pools == [["cuda:0", "cuda:1"]]
    assert backend.encode(["a", "b"]).tolist() == [[2.0, 1024.0]] * 2  # both devices, a batch sized to 80 GiB
    backend.close()
    assert FakeSentenceTransformer.pools == []
