"""Every public array function refuses the wrong dtype, scale and shape with one ValueError
sentence (what was given, what to pass), and the inputs it converts give the exact values."""
from __future__ import annotations

import re

import numpy as np
import pytest

from gfm.metrics import (
    connectivity_error_dim,
    connectivity_error_gfm,
    evaluate_dim,
    evaluate_gfm,
    gfm_errors,
    gradient_error_dim,
    gradient_error_gfm,
    mad_dim,
    mse_dim,
    sad_dim,
)
from rssn import augment
from rssn.checks import max_if_nonnegative
from rssn.foreground import estimate_foreground, estimate_foreground_background
from rssn.imageio import read_matte

from .conftest import shared


def _mattes(h: int = 40, w: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A disc matte with a soft edge, a perturbed prediction (uint8) and its trimap."""
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h / 2, xx - w / 2)
    g = np.clip((15 - r) * 40 + 128, 0, 255).astype(np.uint8)
    p = np.clip(g.astype(int) + np.random.default_rng(3).integers(-30, 31, g.shape), 0, 255).astype(np.uint8)
    t = np.full(g.shape, 128, np.uint8)
    t[g == 0] = 0
    t[g == 255] = 255
    return p, g, t


def _one_sentence(msg: str, func: str, name: str) -> None:
    """The message names the function and the argument, says what was given and what to pass."""
    assert msg.startswith(f"{func}: {name} is "), msg
    assert "; pass " in msg and "\n" not in msg, msg


def _refused(call, func: str, name: str, *given: str) -> str:
    with pytest.raises(ValueError) as info:
        call()
    msg = str(info.value)
    _one_sentence(msg, func, name)
    for g in given:
        assert g in msg, (g, msg)
    return msg


DIM_PAIR = [sad_dim, mse_dim, mad_dim, gradient_error_dim, connectivity_error_dim]
GFM_PAIR = {"gfm_errors": gfm_errors, "gradient_error_gfm": gradient_error_gfm,
            "connectivity_error_gfm": connectivity_error_gfm, "evaluate_gfm": evaluate_gfm}


def _gfm_call(name: str, p, g, t):
    fn = GFM_PAIR[name]
    return fn(p, g, t) if name in ("gfm_errors", "evaluate_gfm") else fn(p, g)


@pytest.mark.parametrize("fn", DIM_PAIR, ids=lambda f: f.__name__)
def test_dim_metrics_refuse_wrong_dtype_scale_and_shape(fn):
    p, g, t = _mattes()
    u = t == 128
    name = fn.__name__
    _refused(lambda: fn(p / 255.0, g, u), name, "pred", "float64 40x50", "np.rint(x * 255)")  # dtype
    _refused(lambda: fn(p, (g > 127).astype(np.uint8), u), name, "gt", "only 0 and 1")      # scale
    _refused(lambda: fn(p, np.dstack([g] * 3), u), name, "gt", "uint8 40x50x3", "IMREAD_GRAYSCALE")  # shape
    _refused(lambda: fn(p, g, t), name, "unknown", "uint8 40x50", "boolean")  # a trimap is not a mask
    _refused(lambda: fn(p[:, :49], g, u), name, "pred", "49x40", "50x40")
    _refused(lambda: fn(p, g, u[:39]), name, "unknown", "50x39")
    _refused(lambda: fn(p.astype(np.uint16) * 257, g, u), name, "pred", "16-bit", "x / 257")
    assert fn(p, g, u) >= 0


def test_evaluate_dim_refuses_a_trimap_that_is_not_0_128_255():
    p, g, t = _mattes()
    msg = _refused(lambda: evaluate_dim(p, g, (t // 127).astype(np.uint8)), "evaluate_dim", "trimap",
                   "values other than 0, 128 and 255", "such as 1")
    assert "normalise_trimap" in msg
    _refused(lambda: evaluate_dim(p / 255.0, g, t), "evaluate_dim", "pred", "float64")
    _refused(lambda: evaluate_dim(p, g, t[:, :10]), "evaluate_dim", "trimap", "10x40")


@pytest.mark.parametrize("name", list(GFM_PAIR))
def test_gfm_metrics_refuse_wrong_dtype_scale_and_shape(name):
    p, g, t = _mattes()
    pf, gf = p / 255.0, g / 255.0
    # the issue's case: 0-255 floats scored as if in [0, 1] gave a SAD 255 times too large
    _refused(lambda: _gfm_call(name, p.astype(np.float64), gf, t), name, "pred", "maximum", "0-255 scale",
             "divide by 255")
    _refused(lambda: _gfm_call(name, pf, gf * 255, t), name, "gt", "0-255 scale")
    _refused(lambda: _gfm_call(name, pf - 0.01, gf, t), name, "pred", "from -0.01")
    nan = pf.copy()
    nan[3, 4] = np.nan
    _refused(lambda: _gfm_call(name, nan, gf, t), name, "pred", "NaN")
    _refused(lambda: _gfm_call(name, p.astype(np.int64), gf, t), name, "pred", "int64")         # dtype
    _refused(lambda: _gfm_call(name, pf > 0.5, gf, t), name, "pred", "bool")
    _refused(lambda: _gfm_call(name, pf, (g > 0).astype(np.uint8), t), name, "gt", "only 0 and 1")  # a 0/1 mask
    _refused(lambda: _gfm_call(name, pf[..., None], gf, t), name, "pred", "40x50x1")            # shape
    _refused(lambda: _gfm_call(name, pf, gf[:30], t), name, "pred", "50x40", "50x30")
    _refused(lambda: _gfm_call(name, [[0.5]], gf, t), name, "pred", "a list", "numpy array")
    _refused(lambda: _gfm_call(name, pf[:0], gf, t), name, "pred", "empty")
    if name in ("gfm_errors", "evaluate_gfm"):
        _refused(lambda: _gfm_call(name, pf, gf, t / 255.0), name, "trimap", "values other than 0, 128 and 255")
        _refused(lambda: _gfm_call(name, pf, gf, t[:20]), name, "trimap", "50x20")


@pytest.mark.parametrize("name", list(GFM_PAIR))
def test_gfm_metrics_convert_integer_mattes_exactly(name):
    p, g, t = _mattes()
    want = _gfm_call(name, p / 255.0, g / 255.0, t)
    assert _gfm_call(name, p, g, t) == want  # x / 255 in float64, the very same numbers
    assert _gfm_call(name, p.astype(np.float32) / np.float32(255), g / 255.0, t) == \
        _gfm_call(name, (p.astype(np.float32) / np.float32(255)).astype(np.float64), g / 255.0, t)
    # a prediction holding only 0 and 1 is scored (a poor model may predict all but nothing)
    tiny = (p > 200).astype(np.uint8)
    assert _gfm_call(name, tiny, g, t) == _gfm_call(name, tiny / 255.0, g / 255.0, t)


def test_converted_uint8_and_uint16_give_the_reference_values():
    """The issue's case on the reference set: uint8 mattes as cv2.imread gives them, scored by
    each GFM-protocol function, reproduce the GFM evaluator's values; 16-bit mattes too."""
    from .test_metrics import _reference, _within

    root, am = shared("metrics-reference"), shared("alphamatting")
    for i, row in enumerate(_reference("gfm")):
        name = row.pop("name")
        p = read_matte(root / "pred" / name).values
        g = read_matte(am / "alpha" / name).values
        t = read_matte(am / "trimap1" / name).values
        got = evaluate_gfm(p, g, t)
        for k, v in row.items():
            assert _within(got[k], v, 1e-6), (name, k, got[k], v)
            assert got[k] >= 0
        if i % 5:
            continue  # the rest on two of the ten, to keep the test fast
        assert got == evaluate_gfm(p / 255.0, g / 255.0, t), name  # bit for bit: the same division
        parts = {**gfm_errors(p, g, t), "grad": gradient_error_gfm(p, g), "conn": connectivity_error_gfm(p, g)}
        assert parts == got, name
        # x * 257 / 65535 and x / 255 can differ in the last bit: the reference's own 1e-6 bound
        got16 = evaluate_gfm(p.astype(np.uint16) * 257, g.astype(np.uint16) * 257, t)
        for k, v in row.items():
            assert _within(got16[k], v, 1e-6), (name, k, got16[k], v)


def test_max_if_nonnegative_matches_numpy_and_sees_negatives():
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        a = rng.random((30, 40)).astype(dtype) * 300
        assert max_if_nonnegative(a) == float(a.max())
        assert max_if_nonnegative(a[::3, 1::2]) == float(a[::3, 1::2].max())  # a strided view
        for bad in (-1e-30, -0.0):
            b = a.copy()
            b[7, 9] = bad
            assert max_if_nonnegative(b) is None
        n = a.copy()
        n[0, 0] = np.nan
        assert np.isnan(max_if_nonnegative(n))
    assert max_if_nonnegative(np.zeros(3, np.float16)) is None
    assert max_if_nonnegative(np.ones(3, ">f8")) is None  # byte-swapped: not read as integers


# --- the RSSN steps ---------------------------------------------------------------------------

def _layers(h: int = 12, w: int = 10):
    rng = np.random.default_rng(5)
    a8 = rng.integers(0, 256, (h, w), dtype=np.uint8)
    f = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return a8, f, b


def test_blend_converts_an_integer_alpha_exactly_and_refuses_wrong_inputs():
    a8, f, b = _layers()
    a32 = a8.astype(np.float32) / np.float32(255)  # what rssn.imageio.Matte.alpha gives
    out = augment.blend(a8, f, b)
    assert np.array_equal(out, augment.blend(a32, f, b))  # the same bytes as the route's alpha
    np.testing.assert_array_equal(augment.blend((a8.astype(np.uint16) * 257), f, b), out)
    a64 = a8[..., None] / 255.0
    np.testing.assert_allclose(out, a64 * f + (1 - a64) * b, rtol=0, atol=1e-3)  # float32 vs float64
    assert np.array_equal(augment.blend(a32, f.astype(np.float64), b.astype(np.float32)), out)
    # wrong scale: a float alpha on 0-255, a layer on [0, 1]
    _refused(lambda: augment.blend(a8.astype(np.float32), f, b), "blend", "alpha", "0-255 scale")
    _refused(lambda: augment.blend(a32, f / 255.0, b), "blend", "fg", "[0, 1] scale", "multiply by 255")
    _refused(lambda: augment.blend(a32, f, b * 2.0), "blend", "bg", "from 0 to 510")
    _refused(lambda: augment.blend((a8 > 127).astype(np.uint8), f, b), "blend", "alpha", "only 0 and 1")
    # wrong dtype
    _refused(lambda: augment.blend(a32, f.astype(np.int64), b), "blend", "fg", "int64")
    _refused(lambda: augment.blend(a8 > 127, f, b), "blend", "alpha", "bool")
    # wrong shape / channels
    _refused(lambda: augment.blend(a32, np.dstack([f, a8]), b), "blend", "fg", "12x10x4", "x[..., :3]")
    _refused(lambda: augment.blend(a32, f, b[..., 0]), "blend", "bg", "12x10")
    _refused(lambda: augment.blend(a32[..., None], f, b), "blend", "alpha", "12x10x1")
    _refused(lambda: augment.blend(a32, f, b[:6]), "blend", "bg", "10x6", "10x12")
    # black layers are on either scale and stay allowed
    assert augment.blend(a32, np.zeros_like(f, np.float32), b).max() <= 255


def test_box_blur_is_scale_free_and_refuses_wrong_inputs():
    img = np.random.default_rng(2).random((30, 40, 3))
    # an average commutes with scaling, so both scales blur right: no scale check is needed
    np.testing.assert_allclose(augment.box_blur(img * 255, 5) / 255, augment.box_blur(img, 5), rtol=1e-12, atol=1e-15)
    assert augment.box_blur(img.astype(np.float32), 3).dtype == np.float32
    _refused(lambda: augment.box_blur(img.astype(np.int64), 5), "box_blur", "img", "int64")            # dtype
    _refused(lambda: augment.box_blur(img > 0.5, 5), "box_blur", "img", "bool")
    _refused(lambda: augment.box_blur(img[None], 5), "box_blur", "img", "1x30x40x3")                   # shape
    _refused(lambda: augment.box_blur(img, 2.5), "box_blur", "kernel", "2.5", "integer >= 1")
    _refused(lambda: augment.box_blur(img, 0), "box_blur", "kernel", "0")
    _refused(lambda: augment.box_blur(img, True), "box_blur", "kernel", "True")


def test_add_gaussian_noise_refuses_wrong_inputs():
    rng = np.random.default_rng(0)
    img = np.random.default_rng(1).random((16, 16, 3)).astype(np.float32)
    # wrong scale: on [0, 1], sigma 10 and the clip at 255 would be 255 times too strong
    _refused(lambda: augment.add_gaussian_noise(img, 10.0, rng), "add_gaussian_noise", "img", "[0, 1] scale")
    _refused(lambda: augment.add_gaussian_noise(img * 1000, 10.0, rng), "add_gaussian_noise", "img", "to 99")
    _refused(lambda: augment.add_gaussian_noise(img.astype(np.int32), 10.0, rng), "add_gaussian_noise", "img", "int32")
    _refused(lambda: augment.add_gaussian_noise(img[..., :2], 10.0, rng), "add_gaussian_noise", "img", "16x16x2")
    _refused(lambda: augment.add_gaussian_noise(img * 255, -1.0, rng), "add_gaussian_noise", "sigma", "-1.0")
    _refused(lambda: augment.add_gaussian_noise(img * 255, 10.0, 7), "add_gaussian_noise", "rng", "int",
             "default_rng")
    # 0-255 input, uint8 or float, HxW or HxWx3: same seed, same bytes, whatever the dtype
    img8 = (img * 255).astype(np.uint8)
    a = augment.add_gaussian_noise(img8, 10.0, np.random.default_rng(4))
    b = augment.add_gaussian_noise(img8.astype(np.float32), 10.0, np.random.default_rng(4))
    assert np.array_equal(a, b)
    assert augment.add_gaussian_noise(img8[..., 0], 0.0, rng).dtype == np.float32


def test_estimate_foreground_converts_the_matte_and_refuses_wrong_inputs():
    a8, f, b = _layers(24, 20)
    image = augment.to_uint8(augment.blend(a8, f, b))
    # converted exactly: x / 255 in float64
    np.testing.assert_array_equal(estimate_foreground(image, a8, "ml"), estimate_foreground(image, a8 / 255.0, "ml"))
    fn, name = estimate_foreground, "estimate_foreground"
    _refused(lambda: fn(image / 255.0, a8), name, "image", "float64", "np.rint(x * 255)")           # dtype
    _refused(lambda: fn(image, a8.astype(np.float64)), name, "alpha", "0-255 scale")                # scale
    _refused(lambda: fn(image[..., 0], a8), name, "image", "uint8 24x20", "COLOR_GRAY2RGB")          # shape
    _refused(lambda: fn(np.dstack([image, a8]), a8), name, "image", "24x20x4", "x[..., :3]")
    _refused(lambda: fn(image, a8[:, :5]), name, "alpha", "5x24", "20x24")
    _refused(lambda: fn(image, a8, "magic"), name, "method", "'magic'")
    _refused(lambda: estimate_foreground_background(image, a8.astype(np.float64)), "estimate_foreground_background",
             "alpha", "0-255 scale")


# --- predict_matte --------------------------------------------------------------------------

def test_predict_matte_refuses_wrong_images_before_touching_the_model():
    """The check comes first: a stand-in model that any use would break shows it (a real
    prediction from a uint8 photo is tested in test_gfm_predict.py)."""
    from gfm.predict import predict_matte

    torch = pytest.importorskip("torch")
    model = object()
    image = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    fn, name = predict_matte, "predict_matte"
    _refused(lambda: fn(model, image / 255.0), name, "image", "float64 64x80x3", "np.rint(x * 255)")  # dtype/scale
    _refused(lambda: fn(model, image.astype(np.float32)), name, "image", "float32", "np.rint(x)")
    _refused(lambda: fn(model, image[..., 0]), name, "image", "uint8 64x80", "COLOR_GRAY2RGB")        # shape
    _refused(lambda: fn(model, np.dstack([image, image[..., :1]])), name, "image", "64x80x4", "x[..., :3]")
    _refused(lambda: fn(model, torch.zeros(64, 80, 3)), name, "image", "Tensor", ".numpy()")
    with pytest.raises(AttributeError):  # a right image goes on to the model
        fn(model, image)


def test_every_message_is_one_sentence_with_what_to_pass():
    """All messages of this module's cases share the form; spot-check a few fully."""
    p, g, t = _mattes()
    msg = _refused(lambda: gfm_errors(p.astype(np.float64), g, t), "gfm_errors", "pred")
    assert re.fullmatch(r"gfm_errors: pred is float64 40x50 with maximum \d+, which is the 0-255 scale; "
                        r"pass values in \[0, 1\] \(divide by 255\), or the uint8 matte itself", msg), msg



def test_open_training_set_checks_its_arguments(tmp_path):
    """The dataset API of the training-data issue: wrong arguments are one ValueError sentence."""
    from gfm.data import open_training_set

    (tmp_path / "d").mkdir()
    for kw, says in (({"rosta": "xx"}, "rosta 'xx'; pass one of"), ({"crop": 300}, "crop 300; pass a positive multiple of 32"),
                     ({"crop": 320.0}, "crop 320.0"), ({"seed": "0"}, "seed '0'; pass an integer")):
        with pytest.raises(ValueError, match=re.escape(says)):
            open_training_set(tmp_path / "d", **kw)
    with pytest.raises(ValueError, match="does not exist; pass a folder"):
        open_training_set(tmp_path / "missing")
    with pytest.raises(ValueError, match="per_fg 0; pass an integer >= 1"):
        open_training_set(fg=tmp_path / "d", bg=tmp_path / "d", per_fg=0)
    with pytest.raises(ValueError, match="bg '.*nowhere' is not a folder"):
        open_training_set(fg=tmp_path / "d", bg=tmp_path / "nowhere")
