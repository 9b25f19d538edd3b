"""Matting metrics against the two reference evaluators and hand-computed cases."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from gfm.evaluate import normalise_trimap, trimap_from_alpha
from gfm.metrics import (
    connectivity_error_dim,
    connectivity_error_gfm,
    evaluate_dim,
    evaluate_gfm,
    gradient_error_gfm,
    mse_dim,
    sad_dim,
)
from gfm.metrics.connectivity import largest_component
from gfm.metrics.gradient import dim_gradient_kernels
from rssn.imageio import ImageReadError, read_matte

from .conftest import REPO, run_cli, shared


def _reference(protocol: str) -> list[dict[str, str]]:
    ref = shared("metrics-reference")
    with open(ref / f"{protocol}_protocol.csv") as f:
        return list(csv.DictReader(f))


def _within(ours: float, ref_text: str, rel: float) -> bool:
    """Relative error under ``rel``, or within half a unit of the reference's last printed digit."""
    ref = float(ref_text)
    decimals = len(ref_text.split(".")[1]) if "." in ref_text else 0
    return abs(ours - ref) <= max(rel * abs(ref), 0.5 * 10.0**-decimals)


@pytest.mark.parametrize("protocol,rel", [("dim", 1e-4), ("gfm", 1e-6)])
def test_reproduces_reference_evaluators(protocol, rel):
    root = shared("metrics-reference")
    am = shared("alphamatting")
    rows = _reference(protocol)
    assert len(rows) == 10
    for row in rows:
        name = row.pop("name")
        p = read_matte(root / "pred" / name).values
        g = read_matte(am / "alpha" / name).values
        t = read_matte(am / "trimap1" / name).values
        got = evaluate_dim(p, g, t) if protocol == "dim" else evaluate_gfm(p / 255.0, g / 255.0, t)
        for k, v in row.items():
            assert _within(got[k], v, rel), (name, k, got[k], v)


def _readme_python_example() -> str:
    """The first python block of the README's "Using the toolkit from Python" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Using the toolkit from Python", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_example_scores_opencv_mattes_with_the_reference_values(tmp_path, monkeypatch):
    """Runs the README's five lines as they are, in a folder laid out as they expect
    (pred/, alpha/, trimap/ linked to the reference set), and checks what they print."""
    import ast
    import contextlib
    import io

    code = _readme_python_example()
    assert len(code.strip().splitlines()) == 5 and "cv2.imread" in code
    root, am = shared("metrics-reference"), shared("alphamatting")
    for link, target in (("pred", root / "pred"), ("alpha", am / "alpha"), ("trimap", am / "trimap1")):
        (tmp_path / link).symlink_to(target, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    printed = dict(line.split(" ", 1) for line in out.getvalue().splitlines())
    for protocol, rel in (("dim", 1e-4), ("gfm", 1e-6)):
        got = ast.literal_eval(printed[protocol.upper()])
        ref = next(r for r in _reference(protocol) if r["name"] == "GT01.png")
        ref.pop("name")
        for k, v in ref.items():
            assert _within(got[k], v, rel), (protocol, k, got[k], v)


def test_dim_kernel_is_the_matlab_one():
    hx, hy = dim_gradient_kernels(1.4)
    assert hx.shape == (9, 9)
    assert abs(float((hx**2).sum()) - 1.0) < 1e-12
    np.testing.assert_allclose(hy, hx.T)
    assert hx[4, 5] < 0 and hx[4, 3] > 0  # -t G(t): negative for positive offsets
    np.testing.assert_allclose(hx[:, 4], 0)


def test_hand_computed_sad_mse():
    g = np.array([[0, 255], [128, 64]], np.uint8)
    p = np.array([[255, 255], [0, 64]], np.uint8)
    u = np.array([[True, True], [True, False]])
    assert sad_dim(p, g, u) == pytest.approx((255 + 0 + 128) / 255 / 1000)
    assert mse_dim(p, g, u) == pytest.approx((1 + 0 + (128 / 255) ** 2) / 3)


def test_perfect_prediction_scores_zero_and_errors_are_positive():
    g = np.zeros((40, 40), np.uint8)
    g[10:30, 10:30] = 255
    g[10:30, 9] = 128
    t = trimap_from_alpha(g, 5)
    assert all(v == 0 for v in evaluate_dim(g, g, t).values())
    assert all(v == 0 for v in evaluate_gfm(g / 255.0, g / 255.0, t).values())
    p = g.copy()
    p[15, 10] = 0
    m = evaluate_dim(p, g, t)
    assert m["sad"] > 0 and m["grad"] > 0 and m["conn"] > 0


def test_connectivity_hand_case():
    # the gt is one 2x2 block at alpha 1; the prediction loses one pixel entirely.
    g = np.zeros((4, 4), np.uint8)
    g[1:3, 1:3] = 255
    p = g.copy()
    p[1, 1] = 0
    u = np.ones((4, 4), bool)
    # l: the lost pixel leaves the largest component at t=0.1 -> l = 0 -> d_p = 0, d_g = 1:
    # phi_p = 1, phi_g = 0 -> contributes 1. Others: in omega for all thresholds (l = 1), or
    # outside from t = 0.1 (l = 0, d = 0): contribute 0.
    assert connectivity_error_dim(p, g, u) == pytest.approx(1 / 1000)
    assert connectivity_error_gfm(p / 255.0, g / 255.0) == pytest.approx(1 / 1000)


def test_largest_component_tie_orders():
    m = np.zeros((4, 4), bool)
    m[0, 3] = m[1, 3] = True  # component A: first in row-major order
    m[2, 0] = m[3, 0] = True  # component B: first in column-major order
    assert largest_component(m, "C")[0, 3]
    assert largest_component(m, "F")[2, 0]
    assert largest_component(np.zeros((3, 3), bool)) is None


def test_gradient_whole_image_matches_scipy_directly():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(2)
    p, g = rng.random((60, 50)), rng.random((60, 50))

    def mag(x):
        a = gaussian_filter(x, 1.4, order=[1, 0], output=np.float32)
        b = gaussian_filter(x, 1.4, order=[0, 1], output=np.float32)
        return np.sqrt(a**2 + b**2)

    expected = float(np.sum(np.square(mag(p) - mag(g))) / 10)
    assert gradient_error_gfm(p, g) == pytest.approx(expected, rel=1e-7)


def test_trimap_values():
    t = np.array([[0, 128, 255], [3, 131, 250]], np.uint8)
    np.testing.assert_array_equal(normalise_trimap(t, "x"), [[0, 128, 255], [0, 128, 255]])
    with pytest.raises(ImageReadError, match="bad.png.*0, 128 or 255"):
        normalise_trimap(np.array([[0, 60]], np.uint8), "bad.png")


def test_eval_command_reports_bad_pairs_and_scores_the_rest(tmp_path):
    root = shared("metrics-reference")
    am = shared("alphamatting")
    pred, gt, tri = tmp_path / "pred", tmp_path / "gt", tmp_path / "tri"
    for d in (pred, gt, tri):
        d.mkdir()
    for n in ("GT01", "GT02", "GT03"):
        Image.open(root / "pred" / f"{n}.png").save(pred / f"{n}.png")
        Image.open(am / "alpha" / f"{n}.png").save(gt / f"{n}.png")
        Image.open(am / "trimap1" / f"{n}.png").save(tri / f"{n}.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(pred / "GT02.png")  # wrong size
    (pred / "GT03.png").write_bytes(b"garbage")  # unreadable
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(pred / "GT99.png")  # no ground truth
    bad_tri = np.asarray(Image.open(tri / "GT01.png").convert("L")).copy()
    Image.open(am / "alpha" / "GT01.png").save(gt / "GT04.png")
    Image.open(root / "pred" / "GT01.png").save(pred / "GT04.png")
    bad_tri[0, 0] = 60
    Image.fromarray(bad_tri).save(tri / "GT04.png")
    proc = run_cli("gfm", "eval", "--pred", str(pred), "--gt", str(gt), "--trimap", str(tri), "--quiet",
                   "--out-csv", str(tmp_path / "s.csv"), "--out-json", str(tmp_path / "s.json"),
                   "--error-maps", str(tmp_path / "maps"), "--allow-partial")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert [r["name"] for r in rows] == ["GT01.png", "mean"]
    assert rows[0]["sad_tran"] == "" and float(rows[0]["sad"]) == pytest.approx(4.317395, rel=1e-4)
    doc = json.loads((tmp_path / "s.json").read_text())
    reasons = {f["name"]: f["reason"] for f in doc["failures"]}
    assert set(reasons) == {"GT02", "GT03", "GT04", "GT99"}
    assert "10x10" in reasons["GT02"] and "0, 128 or 255" in reasons["GT04"]
    assert "no ground truth" in reasons["GT99"] and "not a readable image" in reasons["GT03"]
    assert doc["count"] == 1 and doc["protocol"] == "dim"
    assert (tmp_path / "maps" / "GT01.png").exists()
