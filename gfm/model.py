"""A compact GFM: shared ResNet-34 encoder, glance decoder with pyramid pooling, focus decoder
with a bridge block and U-Net shortcuts, and the three RoSTa fusion rules.

Outputs of :meth:`GFM.forward`: ``glance`` logits (B x 3 for TT, B x 2 for FT/BT), ``focus``
(B x 1, sigmoid; alpha for TT/FT, 1 - alpha for BT, meaningful in the transition area) and
``fusion`` (the collaborative matte, B x 1 in [0, 1]).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

BACKBONES = ("r34", "r34_2b")
ROSTAS = ("tt", "ft", "bt")
GLANCE_CLASSES = {"tt": 3, "ft": 2, "bt": 2}


class PretrainedWeightsError(RuntimeError):
    """ImageNet weights could not be had; the message says what to pass instead."""


def _conv_bn_relu(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _stage(cin: int, cmid: int, cout: int) -> nn.Sequential:
    """Three 3x3 conv + BN + ReLU, then a 2x upsample."""
    return nn.Sequential(_conv_bn_relu(cin, cmid), _conv_bn_relu(cmid, cmid), _conv_bn_relu(cmid, cout),
                         nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))


def _resnet34(pretrained: str):
    """torchvision's ResNet-34 with ``pretrained`` = imagenet | none | a local .pth path."""
    import torchvision

    if pretrained == "none":
        return torchvision.models.resnet34(weights=None)
    if pretrained == "imagenet":
        try:
            return torchvision.models.resnet34(weights=torchvision.models.ResNet34_Weights.IMAGENET1K_V1)
        except Exception as exc:  # offline: URLError, socket errors, ...
            raise PretrainedWeightsError(
                f"could not load torchvision's ImageNet ResNet-34 weights ({exc.__class__.__name__}: {exc}); "
                "offline, pass --pretrained PATH to a local resnet34 .pth file, or --pretrained none"
            ) from None
    net = torchvision.models.resnet34(weights=None)
    try:
        state = torch.load(pretrained, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PretrainedWeightsError(f"{pretrained}: cannot load encoder weights ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    missing, unexpected = net.load_state_dict(state, strict=False)
    if len(missing) > 10:
        raise PretrainedWeightsError(f"{pretrained}: not a ResNet-34 state dict ({len(missing)} missing keys)")
    return net


class Encoder(nn.Module):
    """Feature maps shallow to deep, the deepest at 1/32 of the input (five halvings).

    r34: E0 (1/2) ... E4 (1/32), as torchvision's ResNet-34. r34_2b: a 3x3 stride-1 stem and
    no max-pool (full resolution), layer1..layer4 at 1/1..1/8, then two extra stages of three
    512-channel basic blocks at 1/16 and 1/32.
    """

    def __init__(self, backbone: str = "r34", pretrained: str = "none"):
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        r = _resnet34(pretrained)
        self.backbone = backbone
        if backbone == "r34":
            self.stages = nn.ModuleList([
                nn.Sequential(r.conv1, r.bn1, r.relu),  # 1/2, 64
                nn.Sequential(r.maxpool, r.layer1),  # 1/4, 64
                r.layer2, r.layer3, r.layer4,  # 1/8 128, 1/16 256, 1/32 512
            ])
            self.channels = (64, 64, 128, 256, 512)
        elif backbone == "r34_2b":
            def extra() -> nn.Sequential:
                return nn.Sequential(nn.MaxPool2d(2), *[BasicBlock(512, 512) for _ in range(3)])

            stem = nn.Sequential(nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(64),
                                 nn.ReLU(inplace=True), r.layer1)  # 1/1, 64
            self.stages = nn.ModuleList([stem, r.layer2, r.layer3, r.layer4, extra(), extra()])
            self.channels = (64, 128, 256, 512, 512, 512)
        else:
            raise ValueError(f"unknown backbone {backbone!r}; choose from {BACKBONES}")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for layer in self.stages:
            x = layer(x)
            feats.append(x)
        return feats


class PyramidPooling(nn.Module):
    """Average pooling at several grid sizes, projected and fused with the input."""

    def __init__(self, cin: int, cout: int, bins: tuple[int, ...] = (1, 3, 5)):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(cin, cin // 4, 1, bias=False), nn.ReLU(inplace=True))
            for b in bins)
        self.fuse = _conv_bn_relu(cin + len(bins) * (cin // 4), cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(s(x), size=size, mode="bilinear", align_corners=False) for s in self.stages]
        return self.fuse(torch.cat([x, *pooled], dim=1))


class GFM(nn.Module):
    def __init__(self, backbone: str = "r34", rosta: str = "tt", pretrained: str = "none"):
        super().__init__()
        if rosta not in ROSTAS:
            raise ValueError(f"unknown RoSTa {rosta!r}; choose from {ROSTAS}")
        self.backbone, self.rosta = backbone, rosta
        self.encoder = Encoder(backbone, pretrained)
        *skip_ch, c4 = self.encoder.channels
        skip_ch = skip_ch[::-1]  # deep to shallow: the shortcut after each decoder stage
        widths = (256, 128, 64, 64, 64)  # output channels of the five decoder stages (1/16 .. 1/1)
        # glance: pyramid pooling after E4; its output is projected and added into every stage
        self.ppm = PyramidPooling(c4, c4)
        self.ppm_proj = nn.ModuleList()
        self.glance_stages = nn.ModuleList()
        cin = c4
        for w in widths:
            self.ppm_proj.append(nn.Conv2d(c4, cin, 1))
            self.glance_stages.append(_stage(cin, max(w, 64), w))
            cin = w
        self.glance_head = nn.Conv2d(cin, GLANCE_CLASSES[rosta], 3, padding=1)
        # focus: bridge of three dilated convs after E4, concatenated with E4; U-Net shortcuts
        self.bridge = nn.Sequential(_conv_bn_relu(c4, c4, 2), _conv_bn_relu(c4, c4, 2), _conv_bn_relu(c4, c4, 2))
        self.focus_stages = nn.ModuleList()
        cin = 2 * c4
        for i, w in enumerate(widths):
            self.focus_stages.append(_stage(cin, max(w, 64), w))
            cin = w + (skip_ch[i] if i < len(skip_ch) else 0)
        self.focus_head = nn.Conv2d(cin, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        *skips, e4 = self.encoder(x)
        skips = skips[::-1]
        psp = self.ppm(e4)
        g = psp
        for proj, stage in zip(self.ppm_proj, self.glance_stages):
            g = stage(g + F.interpolate(proj(psp), size=g.shape[-2:], mode="bilinear", align_corners=False))
        glance = self.glance_head(g)
        f = torch.cat([self.bridge(e4), e4], dim=1)
        for i, stage in enumerate(self.focus_stages):
            f = stage(f)
            if i < len(skips):
                f = torch.cat([f, skips[i]], dim=1)
        focus = torch.sigmoid(self.focus_head(f))
        return {"glance": glance, "focus": focus, "fusion": collaborate(glance, focus, self.rosta)}


def collaborate(glance_logits: torch.Tensor, focus: torch.Tensor, rosta: str) -> torch.Tensor:
    """Collaborative matting: the glance decision and the focus alpha become one matte.

    TT: classes (bg, transition, fg); fg -> 1, bg -> 0, transition -> focus.
    FT: classes (bg, fg); fg mask + focus, clamped. BT: classes (bg, fg-with-transition);
    mask - focus (focus predicts 1 - alpha there), clamped. Works on any device.
    """
    cls = glance_logits.argmax(dim=1, keepdim=True)
    if rosta == "tt":
        return torch.where(cls == 2, torch.ones_like(focus), torch.where(cls == 1, focus, torch.zeros_like(focus)))
    mask = (cls == 1).to(focus.dtype)
    if rosta == "ft":
        return (mask + focus).clamp(0, 1)
    if rosta == "bt":
        return (mask - focus).clamp(0, 1)
    raise ValueError(f"unknown RoSTa {rosta!r}")
