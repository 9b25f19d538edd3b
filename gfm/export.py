"""GFM as ONNX for deployment: `gfm export` and prediction through ONNX Runtime.

The exported graph takes a 1x3xHxW float32 image (H and W any multiples of 32, prepared as
:func:`gfm.data.model_input` prepares it for the model's ``input_range``) and returns what
:func:`gfm.predict.predict_matte` reads: ``glance`` (logits), ``focus`` and ``fusion`` for TT, FT
and BT, and ``fusion`` (the RIM output) for RIM. The model's settings travel in the file's
``metadata_props`` (``gfm_*`` keys), so prediction needs nothing else.

Every size-dependent step must stay dynamic in the graph. Pyramid pooling's adaptive average
pooling (bins 1, 3, 5) exports as a pooling whose kernel is fixed at the traced size, which is
wrong at every other size; :class:`SizeFreeAdaptiveAvgPool2d` computes the same bins as two
matrix products whose weights are built from the input's size, and replaces it in the exported
copy (equal to ``nn.AdaptiveAvgPool2d`` up to float rounding, tested).

``onnx``, ``onnxscript`` and ``onnxruntime`` (MIT) come with ``pip install -e '.[onnx]'``.
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .model import GFM, ModelConfig

ONNX_FORMAT = "gfm-onnx"
ONNX_FORMAT_VERSION = 1  # bump when the graph's inputs, outputs or metadata change meaning
OPSET = 18
PASS_RULES = ("hybrid: glance from a pass at 1/3, focus from a pass at 1/2 (RIM: one pass at 1/3); each side "
              "int(side * scale) rounded down to a multiple of 32, at least 32; the longer side at most 1600")
REQUIRED_METADATA = ("gfm_format", "gfm_format_version", "gfm_model_config", "gfm_outputs")
INSTALL_HINT = "ONNX support needs the onnx, onnxscript and onnxruntime packages: pip install -e '.[onnx]'"


class OnnxExportError(ValueError):
    """An ONNX file that is not a usable gfm export, or ONNX support that is not installed."""


def _require(*modules: str) -> None:
    import importlib

    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError:
            raise OnnxExportError(INSTALL_HINT) from None


class SizeFreeAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d(bins)`` whose bins are computed from the input's size at run time:
    bin i of n cells covers [floor(i n / b), ceil((i + 1) n / b)), as PyTorch defines it."""

    def __init__(self, bins: int):
        super().__init__()
        self.bins = int(bins)

    def _weights(self, n: int, like: torch.Tensor) -> torch.Tensor:
        b = self.bins
        i = torch.arange(b, device=like.device)
        start = torch.div(i * n, b, rounding_mode="floor")
        end = torch.div((i + 1) * n + b - 1, b, rounding_mode="floor")
        r = torch.arange(n, device=like.device)
        inside = (r[None, :] >= start[:, None]) & (r[None, :] < end[:, None])
        return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self._weights(x.shape[-2], x), self._weights(x.shape[-1], x)
        return torch.einsum("ih,nchw,jw->ncij", ph, x, pw)


class _Exported(nn.Module):
    """The model with size-free pooling, returning a tuple in the order of ``output_names``."""

    def __init__(self, model: GFM):
        super().__init__()
        self.model = copy.deepcopy(model).float().cpu().eval()
        for m in list(self.model.modules()):
            for name, child in list(m.named_children()):
                if isinstance(child, nn.AdaptiveAvgPool2d):
                    size = child.output_size
                    bins_h, bins_w = (size, size) if isinstance(size, int) or size is None else size
                    if bins_h is None or bins_h != bins_w:
                        raise OnnxExportError(f"cannot export a {size} adaptive pooling")
                    setattr(m, name, SizeFreeAdaptiveAvgPool2d(bins_h))
        self.rim = model.config.rosta == "rim"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(x)
        return (out["fusion"],) if self.rim else (out["glance"], out["focus"], out["fusion"])


def toolkit_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gfm-toolkit")
    except PackageNotFoundError:
        return "unknown"


def output_names(config: ModelConfig) -> list[str]:
    return ["fusion"] if config.rosta == "rim" else ["glance", "focus", "fusion"]


def export_onnx(model: GFM, out: str | Path, *, source: str = "", opset: int = OPSET) -> dict[str, str]:
    """Write ``model`` as ONNX to ``out`` (atomically) with dynamic height and width; returns the
    metadata written into the file. ``onnx.checker`` must pass."""
    _require("onnx", "onnxscript")
    import onnx

    config = model.config
    wrapped = _Exported(model).eval()
    x = torch.zeros(1, 3, 320, 320)
    h, w = torch.export.Dim("h32", min=1, max=512), torch.export.Dim("w32", min=1, max=512)
    names = output_names(config)
    program = torch.onnx.export(wrapped, (x,), None, dynamo=True, input_names=["image"], output_names=names,
                                dynamic_shapes={"x": {2: 32 * h, 3: 32 * w}}, opset_version=opset, verbose=False)
    assert program is not None  # with dynamo=True and no file, export returns the program
    proto = program.model_proto
    meta = {"gfm_format": ONNX_FORMAT, "gfm_format_version": str(ONNX_FORMAT_VERSION),
            "gfm_model_config": json.dumps(config.to_dict(), sort_keys=True), "gfm_outputs": ",".join(names),
            "gfm_backbone": config.backbone, "gfm_rosta": config.rosta, "gfm_input_range": config.input_range,
            "gfm_pass_rules": PASS_RULES, "gfm_toolkit_version": toolkit_version(), "gfm_opset": str(opset),
            "gfm_source": source}
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(proto)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=out.parent)
    os.close(fd)
    try:
        onnx.save_model(proto, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return meta


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``gfm_*`` metadata of an exported file; OnnxExportError naming what is missing."""
    _require("onnx")
    import onnx

    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such ONNX file") from None
    except Exception as exc:
        raise OnnxExportError(f"{path}: not a readable ONNX file ({exc.__class__.__name__}: {str(exc)[:120]}); "
                              "export it again with `gfm export`") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise OnnxExportError(f"{path}: not a gfm export (metadata {', '.join(missing)} missing); "
                              "make one with `gfm export --checkpoint CKPT --out FILE.onnx`")
    if meta["gfm_format"] != ONNX_FORMAT or meta["gfm_format_version"] != str(ONNX_FORMAT_VERSION):
        raise OnnxExportError(f"{path}: gfm_format {meta['gfm_format']} version {meta['gfm_format_version']}, this "
                              f"toolkit reads {ONNX_FORMAT} version {ONNX_FORMAT_VERSION}; export it again")
    return meta


class OnnxGFM:
    """An exported GFM run by ONNX Runtime with the interface :func:`gfm.predict.predict_matte`
    uses: ``config``, ``eval()`` and a call that returns the outputs as a dict of tensors."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu"):
        _require("onnxruntime")
        import onnxruntime as ort

        self.path = Path(path)
        self.metadata = read_metadata(self.path)
        self.config = ModelConfig.from_dict(json.loads(self.metadata["gfm_model_config"]))
        self.outputs = self.metadata["gfm_outputs"].split(",")
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(self.path), providers=providers)
        except Exception as exc:
            raise OnnxExportError(f"{self.path}: ONNX Runtime cannot load it ({exc.__class__.__name__}: "
                                  f"{str(exc)[:160]}); export it again with `gfm export`") from None
        self.training = False

    def eval(self) -> OnnxGFM:
        return self

    def to(self, *_: Any, **__: Any) -> OnnxGFM:
        return self

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        got = self.session.run(self.outputs, {"image": x.detach().float().cpu().numpy()})
        return {k: torch.from_numpy(v) for k, v in zip(self.outputs, got)}
