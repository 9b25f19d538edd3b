"""Small synthetic data sets for tests (generated, never stored)."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from .conftest import SAMPLES


def _samples_module():
    spec = importlib.util.spec_from_file_location("make_samples", SAMPLES / "make_samples.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_tiny_set(root: Path, n_fg: int = 3, n_bg: int = 3, fg_hw=(72, 96), bg_hw=(90, 120), seed: int = 0) -> tuple[Path, Path]:
    """root/fg/{image,alpha} and root/bg with small synthetic photos, mattes and backgrounds."""
    ms = _samples_module()
    rng = np.random.default_rng(seed)
    (root / "fg" / "image").mkdir(parents=True)
    (root / "fg" / "alpha").mkdir(parents=True)
    (root / "bg").mkdir(parents=True)
    for i in range(n_fg):
        photo, alpha = ms.make_foreground(rng, *fg_hw)
        cv2.imwrite(str(root / "fg" / "image" / f"f{i:02d}.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "fg" / "alpha" / f"f{i:02d}.png"), alpha)
    for i in range(n_bg):
        cv2.imwrite(str(root / "bg" / f"b{i:02d}.jpg"), ms.make_background(rng, *bg_hw))
    return root / "fg", root / "bg"


def tree_digest(root: Path, exclude=("summary.json",), skip_dirs=("cache",)) -> dict[str, str]:
    """sha256 of every file below root, by relative path (the run lock, which names the process
    that held it, is not an output)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and rel.parts[0] not in skip_dirs and p.name not in exclude and p.name != ".lock":
            out[rel.as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def kill_when(args: list[str], watch: Path, lines: int, timeout: float = 300, poll: float = 0.01) -> None:
    """Run one of our console commands in its own session and SIGKILL the whole process group
    once ``watch`` holds at least ``lines`` lines (or the command ended, or ``timeout`` passed)."""
    exe = Path(sys.executable).parent / args[0]
    proc = subprocess.Popen([str(exe), *args[1:]], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if watch.exists() and len(watch.read_bytes().splitlines()) >= lines:
            break
        time.sleep(poll)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
