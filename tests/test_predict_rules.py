"""`gfm predict` never loses or silently distorts a matte: colliding names, extreme aspect
ratios, transparent inputs (issue #32). A stand-in network keeps these tests fast: its glance
head says "transition" everywhere and its focus head returns the grey level, so each matte
shows which input it came from."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from rssn.imageio import read_matte


class GreyNet(torch.nn.Module):
    """A GFM stand-in: transition everywhere, focus alpha = mean colour / 255."""

    def __init__(self, rosta: str = "tt"):
        super().__init__()
        self.config = SimpleNamespace(rosta=rosta, input_range="0-255")

    def forward(self, x: torch.Tensor) -> dict:
        n, _, h, w = x.shape
        glance = torch.zeros(n, 3, h, w)
        glance[:, 1] = 1.0
        focus = x.mean(dim=1, keepdim=True) / 255.0
        return {"glance": glance, "focus": focus, "fusion": focus}


def _grey(path: Path, level: int, hw=(40, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*hw, 3), level, np.uint8)).save(path)


def test_same_stem_inputs_are_refused_and_folders_keep_their_names(tmp_path):
    """a.jpg, a.png and sub/a.png: today 3 mattes are "written" and 1 file is left."""
    from gfm.predict import collect_inputs, run_predict

    src = tmp_path / "in"
    _grey(src / "a.jpg", 50)
    _grey(src / "a.png", 200)
    _grey(src / "sub" / "a.png", 120)
    _grey(src / "b.png", 80)
    out = tmp_path / "out"
    res = run_predict(GreyNet(), collect_inputs(src), out, torch.device("cpu"), progress=False, root=src)
    assert sorted(Path(w).relative_to(out).as_posix() for w in res.written) == ["b.png", "sub/a.png"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["b.png", "sub/a.png"]
    assert abs(int(read_matte(out / "sub" / "a.png").values.mean()) - 120) <= 1  # its own matte
    reasons = {Path(f["file"]).name: f["reason"] for f in res.failures}
    assert set(reasons) == {"a.jpg", "a.png"}
    assert str(src / "a.png") in reasons["a.jpg"] and str(src / "a.jpg") in reasons["a.png"]


def test_rgba_outputs_may_not_collide_with_an_input_folder_named_rgba(tmp_path):
    from gfm.predict import output_names

    src = tmp_path / "in"
    names, failures = output_names([src / "x.png", src / "rgba" / "x.png", src / "y.png"], src, rgba=True)
    assert names == {src / "y.png": Path("y.png")}
    assert sorted(Path(f["file"]).relative_to(src).as_posix() for f in failures) == ["rgba/x.png", "x.png"]
    names, failures = output_names([src / "x.png", src / "rgba" / "x.png"], src, rgba=False)
    assert len(names) == 2 and not failures


def test_cli_names_mattes_by_relative_path(tmp_path, monkeypatch):
    """The command passes --input as the root (in-process, the stand-in network loaded)."""
    from click.testing import CliRunner

    import cli
    import gfm.checkpoint

    monkeypatch.setattr(gfm.checkpoint, "load_model", lambda *a, **k: GreyNet())
    src = tmp_path / "in"
    _grey(src / "x" / "a.png", 30)
    _grey(src / "y" / "a.png", 220)
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"stand-in")
    r = CliRunner().invoke(cli.gfm, ["predict", "--checkpoint", str(ckpt), "--input", str(src), "--out",
                                     str(tmp_path / "out"), "--quiet", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert abs(int(read_matte(tmp_path / "out" / "x" / "a.png").values.mean()) - 30) <= 1
    assert abs(int(read_matte(tmp_path / "out" / "y" / "a.png").values.mean()) - 220) <= 1
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["written"] == 2


def test_aspect_change_of_the_32_px_minimum_is_warned(tmp_path):
    from gfm.predict import aspect_change, pass_size, run_predict

    # the case: 10x4000 at 1/3 runs as 32x1312, the aspect ratio changes 9.8-fold
    assert pass_size(10, 4000, 1 / 3) == (32, 1312)
    assert aspect_change(10, 4000, (32, 1312)) == pytest.approx((4000 / 10) / (1312 / 32) - 1)
    thin = tmp_path / "in" / "thin.png"
    _grey(thin, 90, hw=(10, 400))
    _grey(tmp_path / "in" / "plain.png", 90, hw=(96, 96))
    res = run_predict(GreyNet(), [thin, tmp_path / "in" / "plain.png"], tmp_path / "out", torch.device("cpu"),
                      progress=False)
    assert len(res.written) == 2
    warned = [w for w in res.warnings if "aspect ratio" in w["warning"]]
    assert warned and {w["file"] for w in warned} == {str(thin)}  # both passes, the thin image only
    assert "400x10 runs as 128x32" in warned[0]["warning"]


def test_transparent_input_is_warned(tmp_path):
    from gfm.predict import run_predict

    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = 255  # white hidden under the transparency
    rgba[8:24, 8:24, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut.png")
    rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "opaque.png")
    res = run_predict(GreyNet(), [tmp_path / "cut.png", tmp_path / "opaque.png"], tmp_path / "out",
                      torch.device("cpu"), progress=False)
    assert len(res.written) == 2
    warned = [w for w in res.warnings if "transparent" in w["warning"]]
    assert [w["file"] for w in warned] == [str(tmp_path / "cut.png")]
    assert f"{32 * 32 - 16 * 16} pixels" in warned[0]["warning"]
