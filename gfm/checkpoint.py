"""Project checkpoints: one dict with everything needed to predict with a model or to resume
its training exactly. Read with ``torch.load(weights_only=True)``: a checkpoint cannot run code.

Keys: ``format``, ``model`` (state_dict), ``model_config`` (:class:`gfm.model.ModelConfig` as
a dict), and for training runs ``optimizer``, ``scaler``, ``epoch``, ``step``, ``history``,
``torch_rng``, ``config`` (the run's settings, JSON) and ``data_config`` (the settings that
decide the training data, JSON); ``source`` says where imported weights came from.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rssn.imageio import atomic_open

from .dist import unwrap
from .model import GFM, ModelConfig

CHECKPOINT_FORMAT = 2


def model_checkpoint(model: Any, **extra: Any) -> dict[str, Any]:
    """The fields every checkpoint holds, built in one place: the format, the network's weights
    (unwrapped from DDP) and its configuration, which `load_model` needs; ``extra`` adds the
    writer's own fields (training state, the official weights it came from)."""
    core = unwrap(model)
    return {"format": CHECKPOINT_FORMAT, "model": core.state_dict(), "model_config": core.config.to_dict(), **extra}


def save_checkpoint(ckpt: dict[str, Any], path: Path) -> None:
    """Write atomically: a killed run leaves the previous checkpoint whole. Streamed into the
    temporary file (a training checkpoint is 3x the weights: never a second copy in memory)."""
    with atomic_open(path) as f:
        torch.save(ckpt, f)


def read_torch_file(path: str | Path, missing: str, unreadable: str, error: type[Exception] = ValueError) -> Any:
    """``torch.load(weights_only=True)`` on the CPU; a missing file is a FileNotFoundError and any
    other failure an ``error``, both naming the file ("PATH: missing" / "PATH: unreadable (why)").

    Memory-mapped where the file allows it (torch's zip format): a tensor is read when it is
    used, so predicting from a training checkpoint never reads its optimiser state (two thirds
    of the file). Mapped privately: writing a loaded tensor never changes the file."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except FileNotFoundError:
            raise
        except Exception:  # the legacy (pre-zip) format cannot be mapped; any other fault shows below
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {missing}") from None
    except Exception as exc:
        raise error(f"{path}: {unreadable} ({exc.__class__.__name__}: {str(exc)[:200]})") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, or a ValueError that says what the file is not."""
    ckpt = read_torch_file(path, "checkpoint not found", "not a gfm checkpoint")
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        if isinstance(ckpt, dict) and any(k.startswith(("encoder0.", "resnet.", "densenet.")) for k in ckpt):
            raise ValueError(f"{path}: this is an official GFM state_dict, not a gfm-toolkit checkpoint; "
                             "convert it with `gfm import-official --weights FILE --backbone B --rosta R --out CKPT`")
        raise ValueError(f"{path}: not a gfm checkpoint (no model / model_config)")
    if int(ckpt.get("format", 1)) < CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: written by an earlier gfm-toolkit for its narrower network, which is gone; "
                         "retrain, or import the authors' weights with `gfm import-official`")
    return ckpt


def model_config_of(ckpt: dict[str, Any]) -> ModelConfig:
    return ModelConfig.from_dict(dict(ckpt["model_config"]))


def load_model(checkpoint: str | Path, device: torch.device | str = "cpu", backbone: str | None = None,
               rosta: str | None = None) -> GFM:
    """The model of a checkpoint in eval mode; a backbone or RoSTa other than the one asked for is an error.

    A ``.onnx`` file made by ``gfm export`` runs through ONNX Runtime (:class:`gfm.export.OnnxGFM`,
    the same interface for prediction)."""
    if str(checkpoint).lower().endswith(".onnx"):
        from .export import OnnxGFM

        onnx_model = OnnxGFM(checkpoint, device)
        _check_asked(checkpoint, onnx_model.config, backbone, rosta)
        return onnx_model  # type: ignore[return-value]  # OnnxGFM stands in for GFM: the same prediction interface
    ckpt = load_checkpoint(checkpoint)
    mc = model_config_of(ckpt)
    _check_asked(checkpoint, mc, backbone, rosta)
    model = GFM(config=mc, pretrained="none")
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def _check_asked(checkpoint: str | Path, mc: ModelConfig, backbone: str | None, rosta: str | None) -> None:
    for name, want in (("backbone", backbone), ("rosta", rosta)):
        if want is not None and want != getattr(mc, name):
            raise ValueError(f"{checkpoint}: the checkpoint was trained with --{name} {getattr(mc, name)}, "
                             f"not {want}; drop --{name} or pass the right checkpoint")
