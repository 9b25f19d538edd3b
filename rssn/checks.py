"""Input checks at the boundary of the public array functions: dtype, shape, channels and scale.

Every public function that the README names for use from Python calls one of these first, so a
wrong input gets one ``ValueError`` sentence naming the function, the argument, what was given
and what to pass, instead of a silently wrong number (a uint8 difference that wraps around, a
0-255 matte scored as if it were in [0, 1]).

The rules, the same everywhere:

- A matte is HxW: uint8 (0-255), uint16 (0-65535) or float in [0, 1]. Functions that work in
  [0, 1] convert integer mattes exactly (divide by 255 or 65535). A given matte (ground truth,
  the alpha to blend with) that is integer with maximum 1 is a 0/1 mask on the wrong scale and
  is refused; a prediction is not checked for that, since a poor one may be all but empty.
- A photo or layer on the 0-255 scale is uint8, or float in [-0.5, 255.5] (what rounds to 0-255);
  a float one whose maximum lies in (0, 1] is on the [0, 1] scale and is refused.
- Cost: one pass per float array (its maximum, read as unsigned integers, which also shows any
  negative value) and one maximum per given integer matte, about 0.5 ms per 1080p float64
  array; ``benchmarks/eval.py`` measures it against each function's time.
"""
from __future__ import annotations

import numpy as np

MATTE_MAX = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def describe(a: np.ndarray) -> str:
    """``uint8 1080x1920x3``: dtype and shape as one word each."""
    return f"{a.dtype} {'x'.join(map(str, a.shape)) or 'scalar'}"


def _refuse(func: str, name: str, given: str, want: str) -> ValueError:
    return ValueError(f"{func}: {name} is {given}; pass {want}")


def check_array(a: object, func: str, name: str, want: str) -> np.ndarray:
    """``a`` itself when it is a non-empty numpy array, else the ValueError."""
    if not isinstance(a, np.ndarray):
        hint = " (a torch tensor: t.detach().cpu().numpy())" if type(a).__name__ == "Tensor" else ""
        raise _refuse(func, name, f"a {type(a).__name__}{hint}", f"a numpy array, {want}")
    if a.size == 0:
        raise _refuse(func, name, f"empty ({describe(a)})", want)
    return a


def _min_max(a: np.ndarray) -> tuple[float, float]:
    return float(a.min()), float(a.max())


_UINT_OF = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}


def max_if_nonnegative(a: np.ndarray) -> float | None:
    """The maximum of a float32 / float64 array in one pass, when no value has its sign bit set;
    None otherwise (a negative value, -0.0, or another float type: then take min and max).

    Non-negative IEEE floats order like their bit patterns read as unsigned integers, so one
    integer maximum both finds the largest value and tells whether any value is negative (its
    pattern would be the largest). A positive NaN comes back as NaN, which fails every bound.
    """
    ui = _UINT_OF.get(a.dtype)
    if ui is None:
        return None
    m = a.view(ui).max()
    if m >> (8 * a.dtype.itemsize - 1):
        return None
    return float(np.array(m, ui).view(a.dtype))


def _matte_shape(a: object, func: str, name: str, want: str) -> np.ndarray:
    a = check_array(a, func, name, want)
    if a.ndim != 2:
        hint = " (read it with cv2.IMREAD_GRAYSCALE, or take one channel)" if a.ndim == 3 else ""
        raise _refuse(func, name, f"{describe(a)}{hint}", want)
    return a


def _integer_matte_max(a: np.ndarray, func: str, name: str, want: str) -> None:
    if a.max() == 1:
        top = int(MATTE_MAX[a.dtype])
        raise _refuse(func, name, f"{describe(a)} holding only 0 and 1 (a 0/1 mask, not a 0-{top} matte)",
                      f"{want}, e.g. mask * {top}")


def matte_unit(a: object, func: str, name: str = "matte", dtype: type = np.float64, *,
               given: bool = False) -> np.ndarray:
    """The matte as ``dtype`` in [0, 1]: uint8 / uint16 divided by 255 / 65535 exactly, a float
    matte checked to lie in [0, 1] and returned as ``dtype`` (no copy when it already is).
    ``given``: a reference matte, refused when it is an integer 0/1 mask."""
    want = "an HxW matte: uint8 0-255, uint16 0-65535, or float in [0, 1]"
    a = _matte_shape(a, func, name, want)
    if a.dtype in MATTE_MAX:
        if given:
            _integer_matte_max(a, func, name, want)
        return a.astype(dtype) / dtype(MATTE_MAX[a.dtype])
    if a.dtype.kind != "f":
        raise _refuse(func, name, describe(a), want)
    hi = max_if_nonnegative(a)
    if hi is not None and hi <= 1.0:
        return np.asarray(a, dtype=dtype)
    lo, hi = _min_max(a)
    if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
        if np.isnan(lo) or np.isnan(hi):
            what, want = f"{describe(a)} containing NaN", "finite values in [0, 1]"
        elif 1.5 < hi <= 255.0 and lo >= 0.0:
            what = f"{describe(a)} with maximum {hi:g}, which is the 0-255 scale"
            want = "values in [0, 1] (divide by 255), or the uint8 matte itself"
        else:
            what = f"{describe(a)} with values from {lo:g} to {hi:g}"
            want = "values in [0, 1] (np.clip(x, 0, 1) if they only overshoot)"
        raise _refuse(func, name, what, want)
    return np.asarray(a, dtype=dtype)


def matte8(a: object, func: str, name: str = "matte", *, given: bool = False) -> np.ndarray:
    """``a`` when it is an HxW uint8 matte on the 0-255 scale (the DIM protocol's input);
    ``given`` as in :func:`matte_unit`."""
    want = "an HxW uint8 matte (0-255), as cv2.imread(path, cv2.IMREAD_GRAYSCALE) gives"
    a = _matte_shape(a, func, name, want)
    if a.dtype == np.uint8:
        if given:
            _integer_matte_max(a, func, name, want)
        return a
    if a.dtype == np.uint16:
        raise _refuse(func, name, f"{describe(a)} (16-bit)", f"{want}; np.rint(x / 257).astype(np.uint8) converts it")
    if a.dtype.kind == "f":
        hi = float(a.max())
        scale = "in [0, 1]: np.rint(x * 255)" if hi <= 1.0 else "on 0-255: np.rint(x)"
        raise _refuse(func, name, f"{describe(a)} (the DIM protocol scores 8-bit mattes)",
                      f"{want}; for values {scale}.astype(np.uint8)")
    raise _refuse(func, name, describe(a), want)


def same_size(func: str, **arrays: np.ndarray) -> None:
    """All arrays have the same height and width (the first one named is the reference)."""
    (ref_name, ref), *rest = arrays.items()
    for name, a in rest:
        if a.shape[:2] != ref.shape[:2]:
            raise ValueError(f"{func}: {name} is {a.shape[1]}x{a.shape[0]} but {ref_name} is "
                             f"{ref.shape[1]}x{ref.shape[0]}; pass arrays of one size")


def trimap_areas(t: object, func: str, name: str = "trimap") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(foreground, background, unknown) boolean masks of a trimap holding only 0, 128 and 255."""
    want = "an HxW trimap holding only 0, 128 and 255 (gfm.evaluate.normalise_trimap maps near values)"
    t = _matte_shape(t, func, name, want)
    fg, bg, unknown = t == 255, t == 0, t == 128
    n = np.count_nonzero(fg) + np.count_nonzero(bg) + np.count_nonzero(unknown)
    if n != t.size:
        odd = t[~(fg | bg | unknown)]
        shown = ", ".join(f"{v:g}" for v in np.unique(odd[:10000])[:5])
        raise _refuse(func, name, f"{describe(t)} with {t.size - n} values other than 0, 128 and 255 (such as {shown})",
                      want)
    return fg, bg, unknown


def bool_mask(m: object, func: str, name: str = "unknown") -> np.ndarray:
    """``m`` when it is an HxW boolean mask."""
    want = "an HxW boolean mask such as trimap == 128"
    m = _matte_shape(m, func, name, want)
    if m.dtype != np.bool_:
        raise _refuse(func, name, describe(m), want)
    return m


def image255(a: object, func: str, name: str = "image", channels: tuple[int, ...] = (3,),
             gray: bool = False) -> np.ndarray:
    """``a`` when it is an image on the 0-255 scale: uint8, or float in [-0.5, 255.5] whose
    maximum is not in (0, 1] (that is the [0, 1] scale). HxWxC with C in ``channels``, or HxW
    when ``gray``."""
    shapes = " or ".join((["HxW"] if gray else []) + [f"HxWx{c}" for c in channels])
    want = f"an {shapes} image on the 0-255 scale (uint8, or float 0-255)"
    a = check_array(a, func, name, want)
    if not ((a.ndim == 3 and a.shape[2] in channels) or (gray and a.ndim == 2)):
        hint = " (drop the alpha channel: x[..., :3])" if a.ndim == 3 and a.shape[2] == 4 and 3 in channels else ""
        raise _refuse(func, name, f"{describe(a)}{hint}", want)
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind != "f":
        raise _refuse(func, name, describe(a), want)
    hi = max_if_nonnegative(a)
    lo = 0.0
    if hi is None or not hi <= 255.5:
        lo, hi = _min_max(a)
    if 0.0 < hi <= 1.0 and lo >= 0.0:
        raise _refuse(func, name, f"{describe(a)} with maximum {hi:g}, which is the [0, 1] scale",
                      f"{want}: multiply by 255")
    if np.isnan(lo) or np.isnan(hi):
        raise _refuse(func, name, f"{describe(a)} containing NaN", want)
    if not (lo >= -0.5 and hi <= 255.5):
        raise _refuse(func, name, f"{describe(a)} with values from {lo:g} to {hi:g}", want)
    return a


def photo8(a: object, func: str, name: str = "image") -> np.ndarray:
    """``a`` when it is an HxWx3 uint8 RGB photo."""
    want = "an HxWx3 uint8 RGB photo (rssn.imageio.read_image, or cv2.imread then cv2.COLOR_BGR2RGB)"
    a = check_array(a, func, name, want)
    if a.ndim != 3 or a.shape[2] != 3:
        hint = {2: " (grey: cv2.cvtColor(x, cv2.COLOR_GRAY2RGB))", 3: ""}.get(a.ndim, "")
        if a.ndim == 3 and a.shape[2] == 4:
            hint = " (drop the alpha channel: x[..., :3])"
        raise _refuse(func, name, f"{describe(a)}{hint}", want)
    if a.dtype != np.uint8:
        scale = ""
        if a.dtype.kind == "f":
            scale = "; for floats in [0, 1]: np.rint(x * 255).astype(np.uint8)" if float(a.max()) <= 1.0 else \
                "; for floats on 0-255: np.rint(x).astype(np.uint8)"
        raise _refuse(func, name, describe(a), want + scale)
    return a


# ------------------------------------------------------------------ settings
# Configuration dataclasses validate themselves with these when built (`__post_init__`), so a
# Python caller gets the sentence the CLI gives, not a wrong run: ``ValueError("TrainConfig:
# epochs 0: must be an integer >= 1")``.


def _setting(owner: str, key: str, value: object, rule: str) -> ValueError:
    return ValueError(f"{owner}: {key.replace('_', '-')} {value!r}: {rule}")


def check_int_setting(owner: str, key: str, value: object, lo: int, hi: int | None = None, *,
                      optional: bool = False) -> None:
    """``value`` is an integer in [lo, hi] (None allowed when ``optional``)."""
    if value is None and optional:
        return
    if not (isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
            and value >= lo and (hi is None or value <= hi)):
        raise _setting(owner, key, value, f"must be an integer >= {lo}" + (f" and <= {hi}" if hi is not None else ""))


def check_number_setting(owner: str, key: str, value: object, lo: float, hi: float | None = None, *,
                         lo_open: bool = False, optional: bool = False) -> None:
    """``value`` is a finite number >= lo (> lo when ``lo_open``) and <= hi."""
    if value is None and optional:
        return
    ok = (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
          and np.isfinite(value) and (value > lo if lo_open else value >= lo) and (hi is None or value <= hi))
    if not ok:
        rule = f"must be a finite number {'>' if lo_open else '>='} {lo}" + (f" and <= {hi}" if hi is not None else "")
        raise _setting(owner, key, value, rule)


def check_choice_setting(owner: str, key: str, value: object, choices: tuple[str, ...] | list[str], *,
                         optional: bool = False) -> None:
    """``value`` is one of ``choices`` (None allowed when ``optional``)."""
    if value is None and optional:
        return
    if value not in choices:
        raise _setting(owner, key, value, f"choose one of {', '.join(choices)}")
