"""`gfm import-official`, `gfm predict` (the authors' protocol, EN-median) and `gfm profile`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gfm.predict import fuse_resized, pass_size
from rssn.imageio import read_image, read_matte

from .conftest import run_cli, shared
from .test_gfm_model import _official_state_dict


def test_pass_sizes_follow_the_authors_rounding():
    # the authors: int(h * s), minus h % 32 of that, capped at 1600
    for h, w, s in ((1080, 1920, 1 / 3), (1080, 1920, 1 / 2), (563, 800, 1 / 3), (97, 1000, 0.5)):
        rh, rw = int(h * s), int(w * s)
        assert pass_size(h, w, s) == (max(32, min(1600, rh - rh % 32)), max(32, min(1600, rw - rw % 32)))
    # the cap keeps the aspect ratio (the authors cap each side alone: the same below the cap)
    assert pass_size(4000, 6000, 1 / 2) == (1056, 1600)
    assert pass_size(4000, 6000, 1 / 2, max_side=None) == (1984, 2976)


def test_test_time_fusion_by_hand():
    glance = np.array([[0.0, 0.5, 1.0, 0.75]], np.float32)  # bg, transition, fg, a resized border
    focus = np.array([[0.3, 0.6, 0.2, 0.4]], np.float32)
    assert fuse_resized(glance, focus, "tt")[0].tolist() == pytest.approx([0.0, 0.6, 1.0, 0.4])
    assert fuse_resized(glance, focus, "ft")[0].tolist() == pytest.approx([0.3, 1.0, 1.0, 1.0])
    assert fuse_resized(glance, focus, "bt")[0].tolist() == pytest.approx([0.0, 0.0, 0.8, 0.35])


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """The official r34 TT/FT/BT weights, imported as gfm checkpoints with the CLI."""
    root = tmp_path_factory.mktemp("official")
    out = {}
    for variant in ("r34_tt", "r34_ft", "r34_bt"):
        weights = root / f"{variant}.pth"
        torch.save(_official_state_dict(variant), weights)
        ckpt = root / f"{variant}.pt"
        p = run_cli("gfm", "import-official", "--weights", str(weights), "--backbone", "r34", "--rosta",
                    variant.split("_")[1], "--out", str(ckpt))
        assert p.returncode == 0, p.stderr
        assert "55,317,676" in p.stderr or variant != "r34_tt"
        out[variant] = ckpt
    out["weights_tt"] = root / "r34_tt.pth"
    return out


def test_import_refuses_the_wrong_rosta_naming_keys(imported, tmp_path):
    p = run_cli("gfm", "import-official", "--weights", str(imported["weights_tt"]), "--backbone", "r34",
                "--rosta", "rim", "--out", str(tmp_path / "x.pt"))
    assert p.returncode == 2 and "missing key" in p.stderr and "decoder0_g_tt" in p.stderr and "--rosta" in p.stderr
    assert not (tmp_path / "x.pt").exists()
    # an official file given where a gfm checkpoint is expected says how to convert it
    (tmp_path / "in").mkdir()
    p = run_cli("gfm", "predict", "--checkpoint", str(imported["weights_tt"]), "--input", str(tmp_path / "in"),
                "--out", str(tmp_path / "o"))
    assert p.returncode == 2 and "gfm import-official" in p.stderr


def test_imported_checkpoints_predict_a_real_photo_and_ensemble_by_median(imported, tmp_path):
    from gfm.checkpoint import load_model
    from gfm.predict import predict_matte

    photo = shared("alphamatting") / "image" / "GT05.png"
    image = read_image(photo)
    models = {v: load_model(imported[v]) for v in ("r34_tt", "r34_ft", "r34_bt")}
    assert all(m.config.input_range == "0-255" for m in models.values())
    singles = {v: predict_matte(m, image) for v, m in models.items()}
    args = [a for v in ("r34_tt", "r34_ft", "r34_bt") for a in ("--checkpoint", str(imported[v]))]
    p = run_cli("gfm", "predict", *args, "--input", str(photo), "--out", str(tmp_path / "en"), "--quiet", "--device", "cpu")
    assert p.returncode == 0, p.stderr
    assert "peak memory" in p.stderr
    got = read_matte(tmp_path / "en" / "GT05.png")
    assert got.shape == image.shape[:2] and got.maxval == 255
    median = np.median(np.stack(list(singles.values())), axis=0)
    assert np.abs(got.values.astype(float) - np.rint(median * 255)).max() <= 1
    # the median differs from each single model (random weights disagree), so the ensemble is real
    assert all(np.abs(median - s).mean() > 1e-3 for s in singles.values())


def test_predict_output_may_sit_beside_a_file_input(imported, tmp_path):
    """The README's own example: `--input me.jpg --out cut/` in the folder that holds me.jpg."""
    import shutil

    shutil.copy(shared("alphamatting") / "image" / "GT05.png", tmp_path / "me.png")
    p = run_cli("gfm", "predict", "--checkpoint", str(imported["r34_tt"]), "--input", str(tmp_path / "me.png"),
                "--out", str(tmp_path / "cut"), "--quiet", "--device", "cpu", "--scale", "0.25")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "cut" / "me.png").exists()


def test_profile_reports_the_authors_parameter_count():
    p = run_cli("gfm", "profile", "--backbone", "r34", "--rosta", "tt", "--size", "64", "--repeats", "1", "--device",
                "cpu", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["parameters"] == 55_317_676
    # at 800x800 the paper reports about 132 GMacs; MACs grow with the pixel count
    assert 131.8 * (64 / 800) ** 2 * 0.9 < r["gmacs"] < 131.8 * (64 / 800) ** 2 * 1.1


def _read_rgba(path) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)


def test_predict_rgba_writes_estimated_foreground_and_composite(imported, tmp_path):
    """--rgba writes F (ml) under the predicted matte, not the photo's colours; --background white
    writes a F + (1 - a) 255; --fg-method none keeps the photo's colours."""
    from gfm.cutout import cutout_rgba

    photo = shared("alphamatting") / "image" / "GT05.png"
    image = read_image(photo)
    common = ["--checkpoint", str(imported["r34_tt"]), "--input", str(photo), "--quiet", "--device", "cpu",
              "--scale", "0.25", "--rgba"]
    p = run_cli("gfm", "predict", *common, "--background", "white", "--out", str(tmp_path / "ml"))
    assert p.returncode == 0, p.stderr
    a8 = read_matte(tmp_path / "ml" / "GT05.png").values
    rgba = _read_rgba(tmp_path / "ml" / "rgba" / "GT05.png")
    assert np.array_equal(rgba[..., 3], a8)
    assert np.array_equal(rgba, cutout_rgba(image, a8, "ml"))
    band = (a8 > 0) & (a8 < 255)
    assert band.sum() > 1000 and np.abs(rgba[..., :3].astype(int) - image)[band].mean() > 1  # F, not the photo
    comp = read_image(tmp_path / "ml" / "composite" / "GT05.png").astype(float)
    a = a8[..., None] / 255.0
    assert np.abs(comp - (a * rgba[..., :3] + (1 - a) * 255)).max() <= 1
    assert json.loads((tmp_path / "ml" / "summary.json").read_text())["settings"]["fg_method"] == "ml"
    p = run_cli("gfm", "predict", *common, "--fg-method", "none", "--out", str(tmp_path / "none"))
    assert p.returncode == 0, p.stderr
    rgba = _read_rgba(tmp_path / "none" / "rgba" / "GT05.png")
    assert np.array_equal(rgba[..., :3], image) and not (tmp_path / "none" / "composite").exists()
    p = run_cli("gfm", "predict", *common, "--background", "#12", "--out", str(tmp_path / "bad"))
    assert p.returncode == 2 and "neither a colour" in p.stderr


def test_peak_memory_is_the_command_s_own_not_its_parent_s():
    """ru_maxrss survives fork and exec: a `gfm predict` started by a process holding 1 GiB (a
    test runner late in the suite) reported that parent's peak. The summary's figure is the
    command's own high-water mark."""
    import subprocess
    import sys

    held = np.ones(2**30 // 8)  # 1 GiB touched in this process
    code = "import torch; from gfm.predict import _peak_memory_mb; print(_peak_memory_mb(torch.device('cpu')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert float(out) < 800, out  # torch itself is a few hundred MiB
    del held
