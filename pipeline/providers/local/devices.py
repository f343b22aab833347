"""Where a local model runs: `embedding.device` made into torch device names, and the batch size each can hold."""

from __future__ import annotations

from pipeline.errors import ProviderError

CPU_BATCH = 32  # texts per forward pass on the CPU: larger batches pad more and gain nothing there
MAX_GPU_BATCH = 1024
GPU_MEMORY_SHARE = 0.25  # of the free memory, for one batch's activations: the rest for the weights and others


def resolve_devices(setting: str | list[str]) -> list[str]:
    """The torch devices `embedding.device` names: ["cpu"], or one "cuda:N" per GPU it asks for.
    `auto` takes every visible GPU, or the CPU where there is none; `cuda` every visible GPU."""
    import torch

    names = [setting] if isinstance(setting, str) else list(setting)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    devices: list[str] = []
    for name in names:
        if name == "cpu" or (name == "auto" and not gpus):
            devices.append("cpu")
        elif name in ("auto", "cuda"):
            devices += [f"cuda:{index}" for index in range(_needs_gpus(name, gpus))]
        else:
            index = int(name.partition(":")[2])
            if index >= _needs_gpus(name, gpus):
                raise ProviderError(
                    f"embedding.device {name}: this machine has {gpus} GPUs (cuda:0 to cuda:{gpus - 1})"
                )
            devices.append(name)
    if "cpu" in devices and len(devices) > 1:
        raise ProviderError(f"embedding.device {setting}: mix no cpu with GPUs; list only cuda:N devices")
    return list(dict.fromkeys(devices))


def _needs_gpus(name: str, gpus: int) -> int:
    if not gpus:
        raise ProviderError(
            f"embedding.device {name}: no GPU on this machine (torch sees none); set embedding.device: cpu"
        )
    return gpus


def batch_size_for(device: str, max_seq_length: int, hidden_size: int, heads: int) -> int:
    """Texts per forward pass: CPU_BATCH on the CPU; on a GPU as many as a share of its free
    memory holds at the model's longest input, a power of two between 32 and MAX_GPU_BATCH."""
    if not device.startswith("cuda"):
        return CPU_BATCH
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    # one text's activations in fp32: a few hidden-state copies per token, plus one attention map per head
    per_text = 4 * max_seq_length * (16 * hidden_size + 2 * heads * max_seq_length)
    fits = int(free * GPU_MEMORY_SHARE) // per_text
    size = CPU_BATCH
    while size * 2 <= min(fits, MAX_GPU_BATCH):
        size *= 2
    return size
