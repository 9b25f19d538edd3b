"""GFM as the paper and the authors' published models define it (Li et al., IJCV 2022).

One architecture, four encoders (``r34``, ``r34_2b``, ``r101``, ``d121``) and four RoSTa
(``tt``, ``ft``, ``bt``, ``rim``). Layer for layer it is the authors' network: the module
names are the keys of their checkpoints, so an official state_dict loads as it is
(:mod:`gfm.official`) and the parameter count equals theirs (55,317,676 for r34 TT: every
float entry of the state_dict, BatchNorm statistics and the backbone's unused ImageNet head
included, as the authors count).

- Encoder: torchvision's ResNet/DenseNet, cut into stages ``encoder0..4`` (``..6`` for r34_2b,
  a stride-1 stem and two extra stages of three basic blocks at 1/16 and 1/32).
- Glance decoder: pyramid pooling (bins 1, 3, 5, concatenated with its input, then a 1x1
  bottleneck) after the deepest stage; every decoder stage takes the concatenation of its
  input with an upsampled projection of the pooled features (``psp*``, "conv_up_psp").
- Focus decoder: a bridge block of three dilated 3x3 convolutions, then U-Net stages that each
  concatenate the matching encoder stage.
- Collaborative matting: the RoSTa rule (:func:`collaborate`); RIM fuses the three RoSTa
  mattes with a 1x1 conv (3 -> 16), a squeeze-and-excitation layer and a 1x1 conv (16 -> 1).

Outputs of :meth:`GFM.forward` (a dict): ``glance`` logits (B x 3 for TT, B x 2 for FT/BT),
``focus`` (B x 1, sigmoid), ``fusion`` (B x 1). For RIM: ``heads`` = {"tt": {...}, "ft": {...},
"bt": {...}} with those three entries each, and ``fusion`` the RIM output. The authors return
sigmoids of the glance logits; :func:`glance_probabilities` gives the same for comparison.

Ablations of the paper's Table 4 (recorded in the checkpoint with every other model setting):
``decoder="single"`` (no focus decoder and no bridge: the focus head reads the glance decoder's
last features), ``ppm=False`` (no pyramid pooling: the deepest encoder features stand where the
pooled ones stood), ``bridge=False`` (the deepest encoder features stand for the bridge output).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, TypedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

BACKBONES = ("r34", "r34_2b", "r101", "d121")
ROSTAS = ("tt", "ft", "bt", "rim")
GLANCE_CLASSES = {"tt": 3, "ft": 2, "bt": 2}
INPUT_RANGES = ("imagenet", "0-255")

if TYPE_CHECKING:  # torchvision ships no type information: these are Any to mypy, names for the reader
    from torchvision.models import DenseNet, ResNet


class PretrainedWeightsError(RuntimeError):
    """ImageNet weights could not be had; the message says what to pass instead."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the network's shape and what it takes as input.

    ``input_range``: ``imagenet`` (RGB in [0, 1] normalised with ImageNet's mean and std, the
    encoders' own convention; models trained here) or ``0-255`` (RGB values as they are, the
    convention of the authors' published models).
    """

    backbone: str = "r34"
    rosta: str = "tt"
    decoder: str = "glance-focus"  # or "single"
    ppm: bool = True
    bridge: bool = True
    input_range: str = "imagenet"

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose from {', '.join(BACKBONES)}")
        if self.rosta not in ROSTAS:
            raise ValueError(f"unknown RoSTa {self.rosta!r}; choose from {', '.join(ROSTAS)}")
        if self.decoder not in ("glance-focus", "single"):
            raise ValueError(f"unknown decoder {self.decoder!r}; choose glance-focus or single")
        if self.input_range not in INPUT_RANGES:
            raise ValueError(f"unknown input range {self.input_range!r}; choose from {INPUT_RANGES}")

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """From a checkpoint's ``model_config`` (keys it lacks take their defaults)."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model settings {sorted(unknown)}; a newer gfm-toolkit wrote this checkpoint")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- building blocks


def decoder_stage(cin: int, mid1: int, mid2: int, cout: int, last_bn_relu: bool = True,
                  upsample: bool = True) -> nn.Sequential:
    """Three 3x3 convolutions (BN + ReLU after the first two, and after the third unless it is
    a head), then a 2x bilinear upsample."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, mid1, 3, padding=1), nn.BatchNorm2d(mid1), nn.ReLU(inplace=True),
        nn.Conv2d(mid1, mid2, 3, padding=1), nn.BatchNorm2d(mid2), nn.ReLU(inplace=True),
        nn.Conv2d(mid2, cout, 3, padding=1),
    ]
    if last_bn_relu:
        layers += [nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if upsample:
        layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
    return nn.Sequential(*layers)


def pooled_shortcut(cin: int, cout: int, factor: int) -> nn.Sequential:
    """Projection of the pooled features to a decoder stage: 3x3 conv + BN + ReLU, upsample."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Upsample(scale_factor=factor, mode="bilinear", align_corners=False))


def bridge_block(c: int) -> nn.Sequential:
    """Three 3x3 convolutions with dilation 2 (a larger receptive field for the focus decoder)."""
    layers: list[nn.Module] = []
    for _ in range(3):
        layers += [nn.Conv2d(c, c, 3, dilation=2, padding=2), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class PyramidPooling(nn.Module):
    """Average pooling to ``bins`` x ``bins`` grids, a 1x1 conv each, upsampled back
    (align_corners=True as the authors), concatenated with the input, 1x1 bottleneck, ReLU."""

    def __init__(self, channels: int, out_channels: int, bins: tuple[int, ...] = (1, 3, 5)):
        super().__init__()
        self.stages = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(channels, channels, 1, bias=False))
                                    for b in bins)
        self.bottleneck = nn.Conv2d(channels * (len(bins) + 1), out_channels, 1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(s(x), size=size, mode="bilinear", align_corners=True) for s in self.stages]
        return self.relu(self.bottleneck(torch.cat([*pooled, x], dim=1)))


class SqueezeExcitation(nn.Module):
    """Channel attention (Hu et al.): global average, two bias-free linear layers, sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(channels // reduction, channels, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc(x.mean(dim=(2, 3)))
        return x * gate[:, :, None, None]


def _torchvision_backbone(name: str, pretrained: str) -> nn.Module:
    """torchvision's resnet34 / resnet101 / densenet121; ``pretrained`` = imagenet | none | a .pth path."""
    import torchvision

    builders = {"resnet34": (torchvision.models.resnet34, "ResNet34_Weights"),
                "resnet101": (torchvision.models.resnet101, "ResNet101_Weights"),
                "densenet121": (torchvision.models.densenet121, "DenseNet121_Weights")}
    build, weights_name = builders[name]
    if pretrained == "none":
        return build(weights=None)
    if pretrained == "imagenet":
        try:
            return build(weights=getattr(torchvision.models, weights_name).IMAGENET1K_V1)
        except Exception as exc:  # offline: URLError, socket errors, ...
            raise PretrainedWeightsError(
                f"could not load torchvision's ImageNet {name} weights ({exc.__class__.__name__}: {exc}); "
                f"offline, pass --pretrained PATH to a local {name} .pth file, or --pretrained none") from None
    net = build(weights=None)
    try:
        state = torch.load(pretrained, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PretrainedWeightsError(f"{pretrained}: cannot load encoder weights ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200]
        raise PretrainedWeightsError(f"{pretrained}: not a torchvision {name} state_dict ({first})") from None
    return net


def _resnet34(pretrained: str) -> nn.Module:
    return _torchvision_backbone("resnet34", pretrained)


# --------------------------------------------------------------------------- the network

# Per backbone: channels of the pooled features; glance stages top-down as (in, mid1, mid2, out);
# the pooled shortcut (out channels, upsample factor) feeding each stage after the first; and the
# focus stages' input widths (the bridge output or a stage output, plus the encoder shortcut).
class _Spec(TypedDict):
    c: int
    glance: tuple[tuple[int, int, int, int], ...]
    shortcuts: tuple[tuple[int, int], ...]
    focus_in: tuple[int, ...]


_R34_GLANCE = ((1024, 512, 512, 256), (512, 256, 256, 128), (256, 128, 128, 64), (128, 64, 64, 64))
_SPECS: dict[str, _Spec] = {
    "r34": dict(c=512, glance=_R34_GLANCE, shortcuts=((256, 2), (128, 4), (64, 8), (64, 16)),
                focus_in=(1024, 512, 256, 128)),
    "d121": dict(c=512, glance=_R34_GLANCE, shortcuts=((256, 2), (128, 4), (64, 8), (64, 16)),
                 focus_in=(1024, 768, 384, 192)),
    "r101": dict(c=2048, glance=((4096, 2048, 1024, 1024), (2048, 1024, 512, 512), (1024, 512, 256, 256),
                                 (512, 256, 128, 64)),
                 shortcuts=((1024, 2), (512, 4), (256, 8), (64, 16)), focus_in=(4096, 2048, 1024, 512)),
    "r34_2b": dict(c=512, glance=((1024, 512, 512, 512), (1024, 512, 512, 512), *_R34_GLANCE),
                   shortcuts=((512, 2), (512, 4), (256, 8), (128, 16), (64, 32), (64, 32)),
                   focus_in=(1024, 1024, 1024, 512, 256, 128)),
}


class GFM(nn.Module):
    """The GFM network; see the module docstring. ``GFM(backbone, rosta, pretrained)`` or
    ``GFM(config=ModelConfig(...), pretrained=...)``."""

    # set by name (setattr) in __init__, read by name in forward: declared for the type checker
    psp1: nn.Module
    decoder0_g: nn.Module
    decoder0_f: nn.Module

    def __init__(self, backbone: str = "r34", rosta: str = "tt", pretrained: str = "none", *,
                 config: ModelConfig | None = None):
        super().__init__()
        cfg = config or ModelConfig(backbone=backbone, rosta=rosta)
        self.config = cfg
        self.backbone, self.rosta = cfg.backbone, cfg.rosta
        spec = _SPECS[cfg.backbone]
        self._build_encoder(cfg.backbone, pretrained)
        self.depth = 6 if cfg.backbone == "r34_2b" else 4  # index of the deepest encoder stage
        self.head_shortcuts = cfg.backbone != "r34_2b"  # r34_2b's heads read only the decoder output
        c = spec["c"]
        if cfg.ppm:
            self.psp_module = PyramidPooling(c, c, (1, 3, 5))
        # pooled shortcuts psp{depth}..psp1; psp1 feeds the glance head (kept unused in r34_2b,
        # as in the authors' model, whose checkpoints hold it)
        for k, (cout, factor) in zip(range(self.depth, 0, -1), spec["shortcuts"]):
            setattr(self, f"psp{k}", pooled_shortcut(c, cout, factor))
        # glance stages decoder{depth}_g .. decoder1_g (r34_2b: the last one does not upsample)
        for k, dims in zip(range(self.depth, 0, -1), spec["glance"]):
            setattr(self, f"decoder{k}_g", decoder_stage(*dims, upsample=self.head_shortcuts or k > 1))
        if cfg.decoder == "glance-focus":
            if cfg.bridge:
                self.bridge_block = bridge_block(c)
            outs = [d[3] for d in spec["glance"]]
            mids = [(d[1], d[2]) for d in spec["glance"]]
            for i, k in enumerate(range(self.depth, 0, -1)):
                setattr(self, f"decoder{k}_f", decoder_stage(spec["focus_in"][i], *mids[i], outs[i],
                                                             upsample=self.head_shortcuts or k > 1))
        rostas = ("tt", "ft", "bt") if cfg.rosta == "rim" else (cfg.rosta,)
        suffix = (lambda r: f"_{r}") if cfg.rosta == "rim" else (lambda r: "")
        for r in rostas:
            setattr(self, f"decoder0_g{suffix(r)}", self._head(GLANCE_CLASSES[r]))
            setattr(self, f"decoder0_f{suffix(r)}", self._head(1))
        if cfg.rosta == "rim":
            self.rim = nn.Sequential(nn.Conv2d(3, 16, 1), SqueezeExcitation(16), nn.Conv2d(16, 1, 1))
        self._freeze_unused()

    def _head(self, cout: int) -> nn.Sequential:
        if self.head_shortcuts:
            return decoder_stage(128, 64, 64, cout, last_bn_relu=False, upsample=True)
        return nn.Sequential(nn.Conv2d(64, cout, 3, padding=1))

    def _build_encoder(self, backbone: str, pretrained: str) -> None:
        """The encoder stages, sharing their modules with the torchvision model they come from
        (``resnet`` / ``densenet``), which the official checkpoints also hold."""
        if backbone == "d121":
            d: DenseNet = _torchvision_backbone("densenet121", pretrained)
            self.densenet = d
            f = d.features
            self.encoder0 = nn.Sequential(f.conv0, f.norm0, f.relu0)  # 1/2, 64 (no pool0)
            self.encoder1 = nn.Sequential(f.denseblock1, f.transition1)  # 1/4, 128
            self.encoder2 = nn.Sequential(f.denseblock2, f.transition2)  # 1/8, 256
            self.encoder3 = nn.Sequential(f.denseblock3, f.transition3)  # 1/16, 512
            self.encoder4 = nn.Sequential(f.denseblock4, nn.Conv2d(1024, 512, 3, padding=1), nn.BatchNorm2d(512),
                                          nn.ReLU(inplace=True), nn.MaxPool2d(2, 2, ceil_mode=True))  # 1/32, 512
            return
        r: ResNet = _torchvision_backbone("resnet101" if backbone == "r101" else "resnet34", pretrained)
        self.resnet = r
        if backbone == "r34_2b":
            from torchvision.models.resnet import BasicBlock

            self.encoder0 = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
            self.encoder1, self.encoder2, self.encoder3, self.encoder4 = r.layer1, r.layer2, r.layer3, r.layer4
            for k in (5, 6):  # 1/16 and 1/32, 512 channels
                setattr(self, f"encoder{k}", nn.Sequential(nn.MaxPool2d(2, 2, ceil_mode=True),
                                                           *(BasicBlock(512, 512) for _ in range(3))))
            return
        self.encoder0 = nn.Sequential(r.conv1, r.bn1, r.relu)  # 1/2
        self.encoder1 = nn.Sequential(r.maxpool, r.layer1)  # 1/4
        self.encoder2, self.encoder3, self.encoder4 = r.layer2, r.layer3, r.layer4  # 1/8, 1/16, 1/32

    def _freeze_unused(self) -> None:
        """Parameters the forward pass never reads (the ImageNet head, r34_2b's unused stem and
        psp1) get no gradient: the optimiser and DDP skip them, and checkpoints still hold them."""
        used: set[int] = set()
        for name, module in self.named_children():
            if name in ("resnet", "densenet"):
                continue
            if name == "psp1" and not self.head_shortcuts:
                continue
            used.update(id(p) for p in module.parameters())
        for p in self.parameters():
            if id(p) not in used:
                p.requires_grad_(False)

    # ----------------------------------------------------------------------- forward

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.encoder0(x)]
        for k in range(1, self.depth + 1):
            feats.append(getattr(self, f"encoder{k}")(feats[-1]))
        return feats

    def forward(self, x: torch.Tensor) -> dict:
        cfg = self.config
        e = self.encode(x)
        deep = e[self.depth]
        psp = self.psp_module(deep) if cfg.ppm else deep
        g = getattr(self, f"decoder{self.depth}_g")(torch.cat([psp, deep], 1))
        for k in range(self.depth - 1, 0, -1):
            g = getattr(self, f"decoder{k}_g")(torch.cat([getattr(self, f"psp{k + 1}")(psp), g], 1))
        glance_in = torch.cat([self.psp1(psp), g], 1) if self.head_shortcuts else g
        if cfg.decoder == "single":
            focus_in = glance_in
        else:
            bb = self.bridge_block(deep) if cfg.bridge else deep
            f = getattr(self, f"decoder{self.depth}_f")(torch.cat([bb, deep], 1))
            for k in range(self.depth - 1, 0, -1):
                f = getattr(self, f"decoder{k}_f")(torch.cat([f, e[k]], 1))
            focus_in = torch.cat([f, e[0]], 1) if self.head_shortcuts else f
        if cfg.rosta != "rim":
            glance = self.decoder0_g(glance_in)
            focus = torch.sigmoid(self.decoder0_f(focus_in))
            return {"glance": glance, "focus": focus, "fusion": collaborate(glance, focus, cfg.rosta)}
        heads = {}
        for r in ("tt", "ft", "bt"):
            glance = getattr(self, f"decoder0_g_{r}")(glance_in)
            focus = torch.sigmoid(getattr(self, f"decoder0_f_{r}")(focus_in))
            heads[r] = {"glance": glance, "focus": focus, "fusion": collaborate(glance, focus, r)}
        return {"heads": heads, "fusion": self.integrate(heads)}

    def integrate(self, heads: dict) -> torch.Tensor:
        """RIM: the three RoSTa mattes (tt, ft, bt in that order) fused into one."""
        return self.rim(torch.cat([heads[r]["fusion"] for r in ("tt", "ft", "bt")], 1))


def glance_probabilities(glance_logits: torch.Tensor) -> torch.Tensor:
    """The authors' glance output: a sigmoid per class (their decoder ends in a sigmoid)."""
    return torch.sigmoid(glance_logits)


def collaborate(glance_logits: torch.Tensor, focus: torch.Tensor, rosta: str) -> torch.Tensor:
    """Collaborative matting: the glance decision and the focus alpha become one matte.

    TT: classes (bg, transition, fg); fg -> 1, bg -> 0, transition -> focus.
    FT: classes (bg, fg); fg mask + focus, at most 1. BT: classes (bg, fg-with-transition);
    mask - focus (focus predicts 1 - alpha there), at least 0. The argmax of the logits is the
    argmax of the authors' sigmoids. Works on any device.
    """
    cls = glance_logits.argmax(dim=1, keepdim=True)
    if rosta == "tt":
        return torch.where(cls == 2, torch.ones_like(focus), torch.where(cls == 1, focus, torch.zeros_like(focus)))
    mask = (cls == 1).to(focus.dtype)
    if rosta == "ft":
        return (mask + focus).clamp(max=1)
    if rosta == "bt":
        return (mask - focus).clamp(min=0)
    raise ValueError(f"unknown RoSTa {rosta!r}")


def count_parameters(model: nn.Module) -> int:
    """Float entries of the state_dict, each shared tensor once (the authors' count: parameters
    and BatchNorm running statistics, ``num_batches_tracked`` left out)."""
    seen, total = set(), 0
    for name, t in model.state_dict(keep_vars=True).items():
        if name.endswith("num_batches_tracked") or id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel()
    return total
