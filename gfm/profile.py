"""Model complexity for the paper's Table 7: parameters, GMacs and seconds per image."""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn as nn

from .model import GFM, ModelConfig, count_parameters


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of every Conv2d and Linear layer in one forward pass of ``x``
    (forward hooks: a layer used twice is counted twice; pooling, BN and activations left out,
    as the usual counters do)."""
    total = 0

    def conv_hook(m: nn.Conv2d, inp, out) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += out.numel() * k

    def linear_hook(m: nn.Linear, inp, out) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total


def profile_model(backbone: str, rosta: str, size: int = 800, repeats: int = 3,
                  device: torch.device | str = "cpu") -> dict[str, object]:
    """Parameters (the authors' count), GMacs at ``size`` x ``size`` and the median seconds of
    ``repeats`` forward passes after one warm-up."""
    device = torch.device(device)
    torch.manual_seed(0)
    model = GFM(config=ModelConfig(backbone=backbone, rosta=rosta)).to(device).eval()
    x = torch.randn(1, 3, size, size, device=device)
    macs = count_macs(model, x)
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                times.append(time.perf_counter() - t)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return {"backbone": backbone, "rosta": rosta, "parameters": count_parameters(model),
            "parameters_M": round(count_parameters(model) / 1e6, 2), "gmacs": round(macs / 1e9, 2),
            "size": size, "seconds_per_image": round(statistics.median(times), 4), "device": name}
