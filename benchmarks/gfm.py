"""GFM speed and size: the paper's Table 7 figures for each backbone, `gfm predict` seconds per
800x800 image for the published network against the narrower network this project had before
(timed in the same run, read from git history), and training steps per second.

Run: .venv/bin/python benchmarks/gfm.py [--device cpu|cuda] [--backbones r34,r34_2b,d121,r101]
     [--baseline-rev db4c6fc] [--steps 3]
     .venv/bin/python benchmarks/gfm.py --onnx-only   # 1080p hybrid predict: PyTorch vs ONNX Runtime
Random weights: speed does not depend on them.
"""
from __future__ import annotations

import argparse
import importlib.util
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from gfm.losses import all_glance_targets, gfm_loss  # noqa: E402
from gfm.model import GFM  # noqa: E402
from gfm.predict import pass_size, predict_matte  # noqa: E402
from gfm.profile import profile_model  # noqa: E402


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev: torch.device, n: int = 3) -> float:
    fn()
    _sync(dev)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def old_model(rev: str):
    """The project's earlier GFM class, from gfm/model.py at git revision ``rev`` (or None)."""
    try:
        src = subprocess.run(["git", "show", f"{rev}:gfm/model.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None
    path = Path(tempfile.mkdtemp()) / "old_gfm_model.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_gfm_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.GFM


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backbones", default="r34,r34_2b,d121,r101")
    ap.add_argument("--baseline-rev", default="db4c6fc", help="git revision of the earlier, narrower network")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--crop", type=int, default=320)
    ap.add_argument("--onnx-only", action="store_true", help="only 1080p predict through PyTorch and ONNX Runtime")
    args = ap.parse_args()
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else \
        f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}")
    if args.onnx_only:
        onnx_vs_pytorch(dev)
        return

    print("\nTable 7 (TT, one 800x800 forward pass, median of 3 after a warm-up)")
    print(f"{'backbone':10} {'parameters':>13} {'GMacs':>8} {'s/image':>9}")
    for bb in args.backbones.split(","):
        r = profile_model(bb, "tt", 800, 3, dev)
        print(f"{bb:10} {r['parameters']:>13,} {r['gmacs']:>8.2f} {r['seconds_per_image']:>9.3f}")

    torch.manual_seed(0)
    image = np.random.default_rng(0).integers(0, 255, (800, 800, 3), dtype=np.uint8)
    model = GFM("r34", "tt").to(dev).eval()
    hybrid = timed(lambda: predict_matte(model, image, device=dev), dev)
    one = timed(lambda: predict_matte(model, image, device=dev, scale=0.5), dev)
    print(f"\npredict 800x800 (published r34 TT): hybrid {hybrid:.3f} s/image, one pass at 1/2 {one:.3f} s/image")
    Old = old_model(args.baseline_rev)
    if Old is not None:
        old = Old("r34", "tt").to(dev).eval()
        new_sizes = [pass_size(800, 800, 1 / 3), pass_size(800, 800, 1 / 2)]

        def passes(m):
            with torch.no_grad():
                for hw in new_sizes:
                    m(torch.randn(1, 3, *hw, device=dev))

        t_new, t_old = timed(lambda: passes(model), dev), timed(lambda: passes(old), dev)
        n_old = sum(p.numel() for p in old.parameters())
        print(f"the two hybrid passes ({new_sizes}): published {t_new:.3f} s, earlier narrower network "
              f"({n_old / 1e6:.1f}M parameters, rev {args.baseline_rev}) {t_old:.3f} s: ratio {t_new / t_old:.2f}x")

    b, c = args.batch_size, args.crop
    alpha = np.zeros((c, c), np.float32)
    alpha[c // 4: 3 * c // 4, c // 4: 3 * c // 4] = 1
    t = {k: torch.from_numpy(v) for k, v in all_glance_targets(alpha, "tt").items()}
    batch = {"image": torch.randn(b, 3, c, c), "image_raw": torch.rand(b, 3, c, c),
             "alpha": torch.from_numpy(alpha)[None, None].repeat(b, 1, 1, 1),
             "glance": t["glance"][None].repeat(b, 1, 1), "transition": t["transition"][None, None].repeat(b, 1, 1, 1),
             "focus": t["focus"][None, None].repeat(b, 1, 1, 1), "fg": torch.rand(b, 3, c, c), "bg": torch.rand(b, 3, c, c),
             "has_fgbg": torch.ones(b, dtype=torch.bool)}
    batch = {k: v.to(dev) for k, v in batch.items()}
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda")

    def step() -> None:
        with torch.autocast(device_type=dev.type, enabled=dev.type == "cuda"):
            out = model(batch["image"])
        loss = gfm_loss(out, batch)["loss"]
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    s = timed(step, dev, args.steps)
    print(f"train r34 TT, batch {b} at {c}x{c}{', AMP' if dev.type == 'cuda' else ''}: {1 / s:.3f} steps/s "
          f"({b / s:.2f} images/s)")


def onnx_vs_pytorch(dev: torch.device, n: int = 3) -> None:
    """`gfm predict` at 1920x1080 (hybrid: passes of 352x640 and 540->512x960) with the r34 TT
    network in PyTorch eager and exported to ONNX Runtime, timed in the same run."""
    from gfm.export import OnnxGFM, export_onnx

    torch.manual_seed(0)
    model = GFM("r34", "tt", pretrained="none").to(dev).eval()
    image = np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        export_onnx(model, Path(tmp) / "m.onnx")
        print(f"\nexport r34 TT: {time.perf_counter() - t:.0f} s")
        onnx_model = OnnxGFM(Path(tmp) / "m.onnx", dev)
        t_pt = timed(lambda: predict_matte(model, image, device=dev), dev, n)
        t_ort = timed(lambda: predict_matte(onnx_model, image, device=dev), dev, n)
    print(f"predict 1920x1080 hybrid, median of {n}: PyTorch {t_pt:.2f} s, ONNX Runtime {t_ort:.2f} s: "
          f"ONNX Runtime {t_pt / t_ort:.2f}x faster")


if __name__ == "__main__":
    main()
