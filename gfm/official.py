"""The authors' published GFM checkpoints (JizhiziLi/GFM): load them into our GFM and run the
forward pass the way the authors' code returns it.

An official checkpoint is a plain state_dict saved with ``torch.save(model.state_dict())``. Its
keys are our module names (:mod:`gfm.model` mirrors the authors' layout), and the torchvision
backbone appears twice in it, as ``resnet.*`` / ``densenet.*`` and as ``encoder0..``: both name
one tensor in the model, so both must hold the same values. The published models take RGB on the
0-255 scale without ImageNet normalisation; :func:`load_official` records that in the model's
config (``input_range="0-255"``).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .checkpoint import read_torch_file
from .model import GFM, ModelConfig, glance_probabilities


class OfficialWeightsError(ValueError):
    """An official checkpoint does not fit the backbone and RoSTa asked for."""


def _read_state_dict(source: str | Path | Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    if isinstance(source, Mapping):
        return source
    state = read_torch_file(source, "no such weights file", "not a PyTorch state_dict", OfficialWeightsError)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise OfficialWeightsError(f"{source}: not a state_dict (a {type(state).__name__})")
    # weights saved from torch.nn.DataParallel carry a "module." prefix
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_official(state_dict_or_path: str | Path | Mapping[str, torch.Tensor], backbone: str, rosta: str,
                  device: torch.device | str = "cpu") -> GFM:
    """Our GFM (eval mode) holding the weights of an official checkpoint.

    Every key is used: a key of the model that the file lacks, a key of the file that the model
    lacks, a shape that differs, or two names of one tensor holding different values is an
    error naming the keys and what to check (usually ``--backbone`` or ``--rosta``).
    """
    backbone, rosta = backbone.lower(), rosta.lower()
    state = _read_state_dict(state_dict_or_path)
    model = GFM(config=ModelConfig(backbone=backbone, rosta=rosta, input_range="0-255"), pretrained="none")
    own = model.state_dict(keep_vars=True)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    where = state_dict_or_path if not isinstance(state_dict_or_path, Mapping) else "the state_dict"
    if missing or unexpected:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {show(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {show(unexpected)}")
        raise OfficialWeightsError(f"{where} is not an official GFM {backbone}/{rosta} checkpoint: " + "; ".join(parts) +
                                   "; check --backbone (r34, r34_2b, r101, d121) and --rosta (tt, ft, bt, rim)")
    shapes = [f"{k} {tuple(state[k].shape)} (model {tuple(v.shape)})" for k, v in own.items()
              if tuple(state[k].shape) != tuple(v.shape)]
    if shapes:
        raise OfficialWeightsError(f"{where}: shapes differ from GFM {backbone}/{rosta}: " + ", ".join(shapes[:4]) +
                                   "; check --backbone and --rosta")
    first_name: dict[int, str] = {}
    for k, v in own.items():  # one model tensor under two names: the file must agree with itself
        if id(v) in first_name:
            other = first_name[id(v)]
            if not torch.equal(state[k], state[other]):
                raise OfficialWeightsError(f"{where}: {k} and {other} name one tensor of the model but hold different values")
        else:
            first_name[id(v)] = k
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state[k].to(v.dtype))
    return model.to(device).eval()


@torch.no_grad()
def official_forward(model: GFM, x: torch.Tensor) -> Any:
    """What the authors' ``GFM.forward`` returns for ``x`` (fed as it is):
    ``(glance sigmoid, focus sigmoid, fusion)``, or for RIM
    ``[[g, f, fu] for tt, ft, bt] + [rim output]``."""
    out = model(x)
    if "heads" not in out:
        return glance_probabilities(out["glance"]), out["focus"], out["fusion"]
    heads = out["heads"]
    return [[glance_probabilities(heads[r]["glance"]), heads[r]["focus"], heads[r]["fusion"]] for r in ("tt", "ft", "bt")] \
        + [out["fusion"]]
