"""Re-runs that never mix two configurations, one run per output folder, bounded prediction."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rssn.outdir import OutputFolderBusy, SettingsChanged, check_settings, output_lock

from .conftest import run_cli
from .helpers import make_tiny_set


def _compose(fg: Path, bg: Path, out: Path, *extra: str):
    return run_cli("rssn", "compose", "--fg", str(fg), "--bg", str(bg), "--out", str(out), "--per-fg", "2",
                   "--denoise-p", "0", "--workers", "1", "--quiet", *extra)


def _images(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "image").glob("*.png"))}


def test_a_rerun_with_another_seed_stops_and_names_the_setting(tmp_path):
    fg, bg = make_tiny_set(tmp_path / "src", n_fg=2, n_bg=3, fg_hw=(64, 64), bg_hw=(80, 80))
    out = tmp_path / "out"
    assert _compose(fg, bg, out, "--seed", "1").returncode == 0
    first = _images(out)
    p = _compose(fg, bg, out, "--seed", "2")
    assert p.returncode == 2
    assert "seed: 1 -> 2" in p.stderr and "--overwrite" in p.stderr
    assert _images(out) == first  # nothing was touched
    for flag in (("--noise-sigma", "5"), ("--route", "plain"), ("--blur-kernels", "20,30"), ("--format", "jpg")):
        p = _compose(fg, bg, out, "--seed", "1", *flag)
        assert p.returncode == 2 and flag[0].lstrip("-").replace("-", "_").replace("format", "image_format") in p.stderr
    # the same settings continue; a larger K only adds composites
    p = _compose(fg, bg, out, "--seed", "1", "--per-fg", "3")
    assert p.returncode == 0, p.stderr
    grown = _images(out)
    assert len(grown) == 6 and all(grown[k] == v for k, v in first.items())
    # --overwrite moves the old outputs aside and makes the seed-2 corpus
    p = _compose(fg, bg, out, "--seed", "2", "--overwrite")
    assert p.returncode == 0, p.stderr
    assert "moved the earlier outputs" in p.stderr
    moved = [d for d in tmp_path.iterdir() if d.name.startswith("out.old-")]
    assert len(moved) == 1 and _images(moved[0]) == grown
    second = _images(out)
    assert set(second) == set(first) and all(second[k] != first[k] for k in first)
    assert json.loads((out / "settings.json").read_text())["settings"]["seed"] == 2
    p = _compose(fg, bg, out, "--seed", "3", "--overwrite", "delete")
    assert p.returncode == 0 and "deleted" in p.stderr and len(list(tmp_path.glob("out.old-*"))) == 1


def test_settings_rules_by_hand(tmp_path):
    out = tmp_path / "o"
    with output_lock(out, "x"):
        assert check_settings(out, "x", {"a": 1, "k": 2, "src": ["p"]}) is None
        assert check_settings(out, "x", {"a": 1, "k": 3, "src": ["p", "q"]}, may_grow=("k",), may_change=("src",)) is None
        with pytest.raises(SettingsChanged, match=r"k: 3 -> 2"):
            check_settings(out, "x", {"a": 1, "k": 2, "src": []}, may_grow=("k",), may_change=("src",))
        with pytest.raises(SettingsChanged, match="command: x -> y"):
            check_settings(out, "y", {"a": 1})


def test_one_run_per_output_folder_and_no_stale_lock_after_a_kill(tmp_path):
    fg, bg = make_tiny_set(tmp_path / "src", n_fg=1, n_bg=1, fg_hw=(48, 48), bg_hw=(64, 64))
    out = tmp_path / "out"
    with output_lock(out, "rssn compose"):
        p = _compose(fg, bg, out)
        assert p.returncode == 2 and f"process {os.getpid()}" in p.stderr
        assert not (out / "image").exists()
        with pytest.raises(OutputFolderBusy):
            with output_lock(out, "again"):
                pass
    # a process that holds the lock and is killed leaves nothing that blocks the next run
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from rssn.outdir import output_lock\n"
                               f"with output_lock(Path({str(out)!r}), 'holder'):\n"
                               "    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    assert holder.stdout.readline().strip() == "held"
    assert _compose(fg, bg, out).returncode == 2
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    p = _compose(fg, bg, out)
    assert p.returncode == 0, p.stderr
    assert (out / ".lock").exists() and len(_images(out)) == 2


@pytest.mark.slow
def test_train_refuses_to_mix_runs_and_resume_refuses_other_data(tmp_path):
    from .test_gfm_train import small_real_set

    data = small_real_set(tmp_path / "data", height=64)
    out = tmp_path / "run"
    base = ("gfm", "train", "--data", str(data), "--out", str(out), "--pretrained", "none", "--batch-size", "3",
            "--quiet", "--device", "cpu", "--max-steps-per-epoch", "1", "--no-photo-fgbg")
    assert run_cli(*base, "--crop", "64", "--epochs", "1").returncode == 0
    p = run_cli(*base, "--crop", "64", "--epochs", "2")
    assert p.returncode == 2 and "--resume" in p.stderr  # a second plain run would overwrite the first
    p = run_cli(*base, "--crop", "96", "--epochs", "2", "--resume")
    assert p.returncode == 1 and "crop: 64 in the checkpoint, 96 now" in p.stderr
    p = run_cli(*base, "--crop", "64", "--epochs", "2", "--resume", "--rosta", "bt")
    assert p.returncode == 1 and "rosta: tt in the checkpoint, bt now" in p.stderr
    p = run_cli(*base, "--crop", "64", "--epochs", "2", "--resume")
    assert p.returncode == 0, p.stderr
    assert len(json.loads((out / "history.json").read_text())) == 2


@pytest.mark.slow
def test_prediction_of_a_large_photo_is_bounded(tmp_path):
    """A 6000x4000 photo: each network pass is capped at 1600 px on the longer side by default."""
    import torch

    from gfm.model import GFM
    from rssn.imageio import read_matte, write_image

    torch.manual_seed(0)
    weights = tmp_path / "w.pth"
    torch.save(GFM("r34", "tt").state_dict(), weights)
    ckpt = tmp_path / "m.pt"
    assert run_cli("gfm", "import-official", "--weights", str(weights), "--backbone", "r34", "--rosta", "tt",
                   "--out", str(ckpt)).returncode == 0
    photo = tmp_path / "in" / "big.jpg"
    write_image(photo, np.random.default_rng(0).integers(0, 255, (4000, 6000, 3), dtype=np.uint8))
    sizes = []
    import gfm.predict as gp

    real = gp._forward

    def spy(model, image, hw, device):  # records the pass sizes; the network runs in the command below
        sizes.append(hw)
        return {"glance": torch.zeros(1, 3, *hw), "focus": torch.zeros(1, 1, *hw)}

    gp._forward = spy
    try:
        from gfm.checkpoint import load_model
        from rssn.imageio import read_image

        alpha = gp.predict_matte(load_model(ckpt), read_image(photo))
    finally:
        gp._forward = real
    assert sizes == [(1056, 1600), (1056, 1600)] and alpha.shape == (4000, 6000)
    p = run_cli("gfm", "predict", "--checkpoint", str(ckpt), "--input", str(photo), "--out", str(tmp_path / "o"),
                "--quiet", "--device", "cpu")
    assert p.returncode == 0, p.stderr
    doc = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert doc["settings"]["max_side"] == 1600 and doc["written"] == 1
    assert 0 < doc["peak_memory_mb"] < 6000, doc  # uncapped, the 3000x2000 focus pass alone took 6.5 GB
    assert read_matte(tmp_path / "o" / "big.png").shape == (4000, 6000)
