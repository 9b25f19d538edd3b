"""GFM speed: `gfm predict` seconds per 800x800 image and training steps per second.

Run: .venv/bin/python benchmarks/gfm.py [--device cpu|cuda] [--backbone r34] [--steps 5]
Uses random weights (--pretrained none): speed does not depend on them.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gfm.losses import gfm_loss  # noqa: E402
from gfm.model import GFM  # noqa: E402
from gfm.predict import predict_matte  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backbone", default="r34")
    ap.add_argument("--rosta", default="tt")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--crop", type=int, default=320)
    args = ap.parse_args()
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; GFM {args.backbone}/{args.rosta}; torch {torch.__version__}")
    torch.manual_seed(0)
    model = GFM(args.backbone, args.rosta).to(dev)
    image = np.random.default_rng(0).integers(0, 255, (800, 800, 3), dtype=np.uint8)
    for label, kw in (("hybrid (glance 1/3, focus 1/2)", {}), ("one pass at 0.385", {"scale": 0.385}),
                      ("one pass at full size", {"scale": 1.0})):
        predict_matte(model, image, device=dev, **kw)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        n = 3
        for _ in range(n):
            predict_matte(model, image, device=dev, **kw)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        print(f"predict 800x800, {label:32} {(time.perf_counter() - t) / n:7.3f} s/image")

    b, c = args.batch_size, args.crop
    batch = {
        "image": torch.randn(b, 3, c, c), "image_raw": torch.rand(b, 3, c, c), "alpha": torch.rand(b, 1, c, c),
        "glance": torch.randint(0, 3 if args.rosta == "tt" else 2, (b, c, c)), "transition": torch.ones(b, 1, c, c),
        "focus": torch.rand(b, 1, c, c), "fg": torch.rand(b, 3, c, c), "bg": torch.rand(b, 3, c, c),
        "has_fgbg": torch.ones(b, dtype=torch.bool),
    }
    batch = {k: v.to(dev) for k, v in batch.items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda")
    model.train()

    def step() -> None:
        with torch.autocast(device_type=dev.type, enabled=dev.type == "cuda"):
            out = model(batch["image"])
        loss = gfm_loss(out, batch)["loss"]
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    sps = args.steps / (time.perf_counter() - t)
    print(f"train, batch {b} at {c}x{c}{', AMP' if dev.type == 'cuda' else ''}: {sps:7.3f} steps/s ({sps * b:.2f} images/s)")


if __name__ == "__main__":
    main()
