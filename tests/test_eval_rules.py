"""`gfm eval` never gives a silent wrong number: duplicate stems, odd trimaps, outputs over
inputs, shards and partial sets (issue #32)."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gfm.evaluate import normalise_trimap
from rssn.imageio import ImageReadError

from .conftest import run_cli, shared

# SAD/1000 of the reference prediction GT01 against its ground truth over trimap1: the value
# the DIM MATLAB code gives (tests/test_metrics.py checks it against dim_protocol.csv).
GT01_SAD = 4.317395


def _set(tmp_path: Path, names=("GT01", "GT02")) -> tuple[Path, Path, Path]:
    """Reference predictions, ground truth and trimap1 of ``names`` as L PNGs."""
    ref, am = shared("metrics-reference"), shared("alphamatting")
    pred, gt, tri = tmp_path / "pred", tmp_path / "gt", tmp_path / "tri"
    for d in (pred, gt, tri):
        d.mkdir(parents=True)
    for n in names:
        Image.open(ref / "pred" / f"{n}.png").save(pred / f"{n}.png")
        Image.open(am / "alpha" / f"{n}.png").save(gt / f"{n}.png")
        Image.open(am / "trimap1" / f"{n}.png").save(tri / f"{n}.png")
    return pred, gt, tri


def _eval(pred, gt, tri, tmp_path, *extra):
    proc = run_cli("gfm", "eval", "--pred", str(pred), "--gt", str(gt), "--trimap", str(tri), "--quiet",
                   "--out-json", str(tmp_path / "s.json"), "--out-csv", str(tmp_path / "s.csv"), *extra)
    doc = json.loads((tmp_path / "s.json").read_text()) if (tmp_path / "s.json").exists() else None
    return proc, doc


def test_duplicate_stems_are_refused_naming_both_files(tmp_path):
    """GT01.jpg (a wrong matte) beside GT01.png: today the jpg is scored (SAD 31.6, not 4.32)."""
    pred, gt, tri = _set(tmp_path, ("GT01", "GT02", "GT03"))
    wrong = np.zeros_like(np.asarray(Image.open(pred / "GT01.png")))
    Image.fromarray(wrong).save(pred / "GT01.jpg")
    Image.open(gt / "GT02.png").save(gt / "GT02.bmp")  # a duplicate in the ground truth too
    proc, doc = _eval(pred, gt, tri, tmp_path, "--allow-partial")
    assert proc.returncode == 0, proc.stderr
    reasons = {f["name"]: f["reason"] for f in doc["failures"]}
    assert set(reasons) == {"GT01", "GT02"} and doc["count"] == 1 and doc["total"] == 3
    assert str(pred / "GT01.jpg") in reasons["GT01"] and str(pred / "GT01.png") in reasons["GT01"]
    assert str(gt / "GT02.bmp") in reasons["GT02"] and str(gt / "GT02.png") in reasons["GT02"]


def test_duplicate_prediction_does_not_hide_the_others(tmp_path):
    pred, gt, tri = _set(tmp_path, ("GT01", "GT02"))
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(pred / "GT02.jpg")
    proc, doc = _eval(pred, gt, tri, tmp_path, "--allow-partial")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert [r["name"] for r in rows] == ["GT01.png", "mean"]
    assert float(rows[0]["sad"]) == pytest.approx(GT01_SAD, rel=1e-4)  # the png, the right matte
    assert [f["name"] for f in doc["failures"]] == ["GT02"]


def test_trimap_coded_0_1_2_fails_with_the_reason():
    t = np.array([[0, 1, 2], [0, 0, 2]], np.uint8)
    with pytest.raises(ImageReadError, match="coded 0/1/2"):
        normalise_trimap(t, "t.png")
    with pytest.raises(ImageReadError, match="no unknown"):
        normalise_trimap(np.array([[0, 255], [255, 0]], np.uint8), "t.png")
    # lossy trimaps still pass: 3-16 is background, 96-160 unknown, 239-255 foreground
    np.testing.assert_array_equal(normalise_trimap(np.array([[5, 100, 250]], np.uint8), "t"), [[0, 128, 255]])


def test_trimap_coded_0_1_2_is_a_failed_image_not_a_zero(tmp_path):
    """Today GT01 scores SAD 0 and MSE 0 with such a trimap, and the zero goes into the mean."""
    pred, gt, tri = _set(tmp_path, ("GT01", "GT02"))
    t = np.asarray(Image.open(tri / "GT01.png").convert("L"))
    Image.fromarray((t // 127).astype(np.uint8)).save(tri / "GT01.png")  # 0, 1, 2
    proc, doc = _eval(pred, gt, tri, tmp_path)
    assert proc.returncode == 1  # a failure without --allow-partial
    assert [f["name"] for f in doc["failures"]] == ["GT01"] and "0/1/2" in doc["failures"][0]["reason"]
    assert doc["count"] == 1 and doc["total"] == 2
    assert "scored 1 of 2" in proc.stderr and "--allow-partial" in proc.stderr


def test_palette_trimap_with_transparency_is_read_by_colour(tmp_path):
    """A palette trimap whose background entry is marked transparent: its alpha channel is
    {0, 255} (no unknown pixel); its colours are the trimap."""
    am = shared("alphamatting")
    src = Image.open(am / "trimap1" / "GT01.png")
    assert src.mode == "P"
    want = np.asarray(src.convert("L"))
    n_unknown = int((want == 128).sum())
    assert n_unknown == 38573  # the figure of the issue
    black = [i for i, c in enumerate(np.asarray(src.getpalette()).reshape(-1, 3)) if tuple(c) == (0, 0, 0)][0]
    path = tmp_path / "GT01.png"
    src.save(path, transparency=black)
    assert "transparency" in Image.open(path).info
    from rssn.imageio import read_trimap

    got = read_trimap(path)
    np.testing.assert_array_equal(got, want)
    # and through the command: the same score as with the plain trimap
    pred, gt, tri = _set(tmp_path / "s", ("GT01",))
    src.save(tri / "GT01.png", transparency=black)
    proc, doc = _eval(pred, gt, tri, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert doc["means"]["sad"] == pytest.approx(GT01_SAD, rel=1e-4)


def test_rgba_trimap_uses_colour_not_alpha(tmp_path):
    t = np.array([[0, 128, 255, 128]], np.uint8)
    rgba = np.dstack([t, t, t, np.array([[0, 255, 255, 0]], np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    from rssn.imageio import read_trimap

    np.testing.assert_array_equal(read_trimap(tmp_path / "t.png"), t)


def _photo_set(root: Path) -> Path:
    am = shared("alphamatting")
    for sub in ("image", "alpha"):
        (root / sub).mkdir(parents=True)
        Image.open(am / sub / "GT01.png").save(root / sub / "GT01.png")
    return root


def test_pred_out_may_not_overwrite_the_ground_truth(tmp_path):
    data = _photo_set(tmp_path / "D")
    before = hashlib.md5((data / "alpha" / "GT01.png").read_bytes()).hexdigest()
    ckpt = tmp_path / "never-loaded.pt"
    ckpt.write_bytes(b"x")  # refused before the checkpoint is read
    for out in (data / "alpha", data, tmp_path / "D" / "preds"):
        proc = run_cli("gfm", "eval", "--checkpoint", str(ckpt), "--data", str(data), "--pred-out", str(out),
                       "--quiet")
        assert proc.returncode == 2 and "--data" in proc.stderr, proc.stderr
    # --pred-out over a --gt given apart from --data
    proc = run_cli("gfm", "eval", "--checkpoint", str(ckpt), "--data", str(data), "--gt", str(data / "alpha"),
                   "--pred-out", str(data / "alpha"), "--quiet")
    assert proc.returncode == 2
    proc = run_cli("gfm", "eval", "--pred", str(data / "alpha"), "--gt", str(data / "alpha"),
                   "--error-maps", str(data / "alpha" / "maps"), "--quiet")
    assert proc.returncode == 2 and "inside" in proc.stderr
    assert hashlib.md5((data / "alpha" / "GT01.png").read_bytes()).hexdigest() == before


def test_webdataset_shards_are_refused_with_a_usage_error(tmp_path):
    shards = tmp_path / "comp" / "shards"
    shards.mkdir(parents=True)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "PNG")
    img = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, "PNG")
    with tarfile.open(shards / "shard-000000.tar", "w") as tar:
        for name, data in (("k.image.png", img), ("k.alpha.png", buf.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ckpt = tmp_path / "never-loaded.pt"
    ckpt.write_bytes(b"x")
    proc = run_cli("gfm", "eval", "--checkpoint", str(ckpt), "--data", str(tmp_path / "comp"), "--quiet")
    assert proc.returncode == 2 and "shards" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_partial_set_exits_1_and_says_scored_n_of_m(tmp_path):
    pred, gt, tri = _set(tmp_path, ("GT01", "GT02"))
    (pred / "GT02.png").unlink()
    proc, doc = _eval(pred, gt, tri, tmp_path)
    assert proc.returncode == 1
    assert "scored 1 of 2" in proc.stderr and "PARTIAL" in proc.stderr
    assert doc["count"] == 1 and doc["total"] == 2  # the report is still written
    proc, _ = _eval(pred, gt, tri, tmp_path, "--allow-partial")
    assert proc.returncode == 0 and "scored 1 of 2" in proc.stderr
    Image.open(shared("metrics-reference") / "pred" / "GT02.png").save(pred / "GT02.png")
    proc, doc = _eval(pred, gt, tri, tmp_path)
    assert proc.returncode == 0 and "scored 2 of 2" in proc.stderr and "PARTIAL" not in proc.stderr
