"""`rssn compose`: the RSSN composition route as a pipeline of narrow stages.

plan (main process)  ->  compose_unit (a worker: read, estimate, per-slot ops, write)
                     ->  record (main process: manifest, progress, summary)

A work unit is one foreground with the background slots still to make, so the foreground
estimate and its denoised copy are computed once and shared by its K composites. Every random
choice comes from a generator derived from (seed, foreground stem, slot).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import augment
from .cache import ImageCache, content_key
from .denoise import DEFAULT_PROFILE as DEFAULT_DENOISE_PROFILE
from .denoise import FG_SIGMA_VERSION, SigmaEstimate, bm3d_denoise, estimate_noise_sigma, foreground_noise_sigma
from .denoise import VERSION as DENOISE_VERSION
from .foreground import ALGORITHM_VERSION, FG_METHODS, estimate_foreground
from .imageio import (
    ImageReadError,
    Matte,
    failure_code,
    list_images,
    read_image,
    read_matte,
    read_rgba,
    remove_stale_temporaries,
    write_image,
    write_matte,
)
from .layout import LAYOUTS, ForegroundItem, InputFailure, find_foregrounds
from .manifest import Manifest
from .provenance import Provenance
from .seeding import derive_rng

OUTPUT_DIRS = ("image", "alpha", "fg", "bg")


@dataclass(frozen=True)
class ComposeConfig:
    """Every setting of a compose run; built and validated once by the CLI."""

    fg_dir: Path
    bg_dir: Path
    out_dir: Path
    per_fg: int = 5
    seed: int = 0
    route: str = "rssn"  # rssn | plain
    fg_method: str = "cf"
    layout: str = "auto"
    denoise_p: float = 0.5
    denoise_sigma: float | None = None  # None: estimated from each image
    denoise_profile: str = DEFAULT_DENOISE_PROFILE
    blur_p: float = 0.5
    blur_kernels: tuple[int, ...] = augment.PAPER_BLUR_KERNELS
    noise_p: float = 0.5
    noise_sigma: float = 10.0
    workers: int = 1
    executor: str = "local"
    ray_address: str | None = None
    retries: int = 2
    cache_dir: Path | None = None
    image_format: str = "png"  # png | jpg | webdataset (PNG files packed into tar shards at the end)
    shard_size: int = 1000
    png_level: int = 1
    jpeg_quality: int = 95
    # provenance (rssn.provenance): attribution files (None: bg20k's ATTRIBUTION.csv beside --bg)
    bg_attribution: Path | None = None
    fg_attribution: Path | None = None
    require_license: bool = False
    licenses: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_compose_settings(asdict(self))

    @property
    def probabilities(self) -> augment.RouteProbabilities:
        if self.route == "plain":
            return augment.RouteProbabilities(0.0, 0.0, self.blur_kernels, 0.0)
        return augment.RouteProbabilities(self.denoise_p, self.blur_p, self.blur_kernels, self.noise_p)

    @property
    def cache_root(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else default_cache_dir()


ROUTES = ("rssn", "plain")
EXECUTORS = ("local", "ray")
IMAGE_FORMATS = ("png", "jpg", "webdataset", "store")  # store: PNG, then packed by gfm pack


def check_compose_settings(values: dict[str, Any]) -> None:
    """Validate ComposeConfig values (any subset of its fields): ValueError naming the field, the
    value and what it must be. Every way of building a compose run goes through this: the CLI,
    `gfm experiment --arm`, `gfm train --fg --bg` and Python callers."""
    from .denoise import PROFILES

    def bad(key: str, rule: str) -> ValueError:
        return ValueError(f"{key.replace('_', '-')} {values[key]!r}: {rule}")

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # not NaN

    choices = {"route": ROUTES, "fg_method": FG_METHODS, "layout": LAYOUTS, "denoise_profile": PROFILES,
               "executor": EXECUTORS, "image_format": IMAGE_FORMATS}
    for key, allowed in choices.items():
        if key in values and values[key] not in allowed:
            raise bad(key, f"choose one of {', '.join(allowed)}")
    for key in ("denoise_p", "blur_p", "noise_p"):
        if key in values and not (number(values[key]) and 0.0 <= values[key] <= 1.0):
            raise bad(key, "a probability must lie in [0, 1]")
    if "noise_sigma" in values and not (number(values["noise_sigma"]) and 0 <= values["noise_sigma"] < float("inf")):
        raise bad("noise_sigma", "must be a finite number >= 0 (0-255 scale)")
    if values.get("denoise_sigma") is not None and not (number(values["denoise_sigma"]) and
                                                        0 < values["denoise_sigma"] < float("inf")):
        raise bad("denoise_sigma", "must be a finite number > 0 (0-255 scale), or left out to estimate it")
    if "blur_kernels" in values:
        k = values["blur_kernels"]
        if not k or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in k):
            raise bad("blur_kernels", "must be one or more positive integer kernel sizes, e.g. 20,30,40,50,60")
    for key, lo, hi in (("per_fg", 1, None), ("workers", 1, None), ("retries", 0, None), ("shard_size", 1, None),
                        ("png_level", 0, 9), ("jpeg_quality", 1, 100)):
        if key in values:
            v = values[key]
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)):
                raise bad(key, f"must be an integer >= {lo}" + (f" and <= {hi}" if hi is not None else ""))


# ComposeConfig fields that do not change a composite's bytes (how and where the work runs)
RUN_ONLY_SETTINGS = ("out_dir", "workers", "executor", "ray_address", "retries", "cache_dir")
# settings a re-run may change: they decide which inputs are drawn, re-checked on every run
PROVENANCE_SETTINGS = ("bg_attribution", "fg_attribution", "require_license", "licenses")


def byte_settings(cfg: ComposeConfig) -> dict[str, Any]:
    """The settings that decide the output bytes (recorded in OUT/settings.json; a re-run with
    other values would mix two corpora). ``per_fg`` may grow: a larger K only adds composites."""
    return {k: v for k, v in asdict(cfg).items() if k not in RUN_ONLY_SETTINGS}


class DiskFullError(OSError):
    """The output disk is full: the run stops (it resumes once there is space)."""


@dataclass(frozen=True)
class Unit:
    """One foreground and the (slot, background path) pairs still to make for it."""

    item: ForegroundItem
    slots: tuple[tuple[int, str], ...]


@dataclass
class Summary:
    foregrounds: int = 0
    backgrounds: int = 0
    planned: int = 0
    made: int = 0
    skipped_existing: int = 0
    failed_composites: int = 0
    failed_inputs: int = 0
    licence_refused_fg: int = 0
    licence_refused_bg: int = 0
    withdrawn: int = 0
    seconds: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)

    @property
    def composites_per_second(self) -> float:
        return self.made / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["composites_per_second"] = round(self.composites_per_second, 4)
        d["seconds"] = round(self.seconds, 3)
        return d


def default_cache_dir() -> Path:
    """The user's cache ($XDG_CACHE_HOME/gfm-toolkit or ~/.cache/gfm-toolkit): foreground
    estimates and BM3D results are shared by every run and command of this user."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gfm-toolkit"


def composite_id(stem: str, slot: int) -> str:
    return f"{stem}_{slot:03d}"


def composite_rng(seed: int, stem: str, slot: int) -> np.random.Generator:
    """The generator of one composite; its first draw is :func:`augment.draw_params`."""
    return derive_rng(seed, "composite", stem, slot)


def assign_backgrounds(seed: int, stem: str, n_backgrounds: int, k: int) -> list[int]:
    """K background indices for a foreground: distinct while K <= the number of backgrounds."""
    rng = derive_rng(seed, "backgrounds", stem)
    picks: list[int] = []
    while len(picks) < k:
        picks.extend(int(i) for i in rng.permutation(n_backgrounds))
    return picks[:k]


# ------------------------------------------------------------------ stage 1: plan


def plan(cfg: ComposeConfig, manifest: Manifest, prov: Provenance | None = None
         ) -> tuple[list[Unit], list[InputFailure], Summary]:
    """Pair the inputs, draw backgrounds among those the licence rule of ``prov`` allows, and
    leave out composites the manifest already holds."""
    items, failures = find_foregrounds(cfg.fg_dir, cfg.layout)
    backgrounds = [str(p) for p in list_images(cfg.bg_dir)]
    if prov is not None:
        items, backgrounds = prov.allowed(items, backgrounds)
    summary = Summary(foregrounds=len(items), backgrounds=len(backgrounds))
    if prov is not None:
        summary.licence_refused_fg, summary.licence_refused_bg = prov.refused_fg, prov.refused_bg
    if not backgrounds:
        raise FileNotFoundError(f"{cfg.bg_dir}: no background images found (looked for {', '.join(('jpg', 'png', 'webp', 'tif'))})")
    units = []
    for item in items:
        todo = []
        for slot, bg_index in enumerate(assign_backgrounds(cfg.seed, item.stem, len(backgrounds), cfg.per_fg)):
            summary.planned += 1
            cid = composite_id(item.stem, slot)
            rec = manifest.get(f"composite:{cid}")
            if rec is not None and all((cfg.out_dir / p).exists() for p in rec["outputs"].values()):
                summary.skipped_existing += 1
                continue
            todo.append((slot, backgrounds[bg_index]))
        if todo:
            units.append(Unit(item, tuple(todo)))
    return units, failures, summary


# ------------------------------------------------------------------ stage 2: process


class ForegroundState:
    """Per-unit memo: the foreground is read, estimated and denoised at most once."""

    def __init__(self, item: ForegroundItem, cfg: ComposeConfig, cache: ImageCache):
        self.item, self.cfg, self.cache = item, cfg, cache
        self.matte: Matte
        self.fg8: np.ndarray
        self.source: np.ndarray  # the image the foreground's pixels come from (photo, given F, RGBA colours)
        self._noise: SigmaEstimate | None = None
        self._denoised: tuple[np.ndarray, SigmaEstimate] | None = None
        self._load()

    def _load(self) -> None:
        item = self.item
        if item.kind == "rgba":
            image, matte = read_rgba(item.image)
        else:
            image = read_image(item.image)
            assert item.matte is not None
            matte = read_matte(item.matte)
            if matte.shape != image.shape[:2]:
                raise ImageReadError(
                    item.matte,
                    f"matte is {matte.shape[1]}x{matte.shape[0]} but its photo {item.image} is "
                    f"{image.shape[1]}x{image.shape[0]}",
                )
        if not matte.values.any():
            raise ImageReadError(item.matte or item.image, "matte is empty (all zero): nothing to composite")
        self.matte = matte
        self.source = image
        self.fg_method = "given" if item.kind == "fg" else self.cfg.fg_method
        if self.fg_method == "given":
            self.fg8 = image
            return
        key = content_key(image, matte.values, matte.maxval, self.fg_method, ALGORITHM_VERSION[self.fg_method])
        fg8 = self.cache.get(f"fg-{self.fg_method}", key)
        if fg8 is None:
            f = estimate_foreground(image, matte.alpha, self.fg_method)
            fg8 = augment.to_uint8(f * 255.0)
            self.cache.put(f"fg-{self.fg_method}", key, fg8)
        self.fg8 = fg8

    def noise(self) -> SigmaEstimate:
        """BM3D's noise level for this foreground: ``--denoise-sigma``, or measured on the
        source image where the foreground's pixels are (not on the estimated layer ``fg8``)."""
        if self._noise is None:
            self._noise = foreground_noise_sigma(self.source, self.matte.alpha, self.cfg.denoise_sigma)
        return self._noise

    def denoised(self) -> tuple[np.ndarray, SigmaEstimate]:
        if self._denoised is None:
            est = self.noise()
            out, _ = denoise_cached(self.fg8, est.sigma, self.cfg.denoise_profile, self.cache, FG_SIGMA_VERSION)
            self._denoised = out, est
        return self._denoised

    def ensure_denoised(self) -> bool:
        """Put the denoised foreground in the cache unless it is there; True when computed now."""
        return ensure_denoised(self.fg8, self.noise().sigma, self.cfg.denoise_profile, self.cache, FG_SIGMA_VERSION)[0]


def _denoise_key(img: np.ndarray, sigma: float | None, profile: str, tag: str | None) -> tuple[str, str, float]:
    """(cache kind, key, sigma used). Backgrounds have no ``tag``, so their keys (and their cached
    BM3D results, the costly part) are those of every earlier version; foregrounds carry
    FG_SIGMA_VERSION."""
    sigma = round(float(sigma if sigma is not None else estimate_noise_sigma(img)), 4)
    parts: tuple[Any, ...] = (img, sigma, DENOISE_VERSION) + ((tag,) if tag is not None else ())
    return f"bm3d-{profile}", content_key(*parts), sigma


def denoise_cached(img: np.ndarray, sigma: float | None, profile: str, cache: ImageCache,
                   tag: str | None = None) -> tuple[np.ndarray, float]:
    """BM3D of ``img`` at ``sigma`` (None: estimated from the whole image, as for backgrounds),
    through the content cache."""
    kind, key, sigma = _denoise_key(img, sigma, profile, tag)
    out = cache.get(kind, key)
    if out is None:
        out = bm3d_denoise(img, sigma, profile)
        cache.put(kind, key, out)
    return out, sigma


def ensure_denoised(img: np.ndarray, sigma: float | None, profile: str, cache: ImageCache,
                    tag: str | None = None) -> tuple[bool, float]:
    """Put BM3D of ``img`` in the cache unless it is there (no decoding of a hit);
    returns (computed now, sigma used)."""
    kind, key, sigma = _denoise_key(img, sigma, profile, tag)
    if cache.has(kind, key):
        return False, sigma
    cache.put(kind, key, bm3d_denoise(img, sigma, profile))
    return True, sigma


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def compose_unit(unit: Unit, cfg: ComposeConfig) -> list[dict[str, Any]]:
    """Make the unit's composites and write their files; returns manifest records."""
    cache = ImageCache(cfg.cache_root)
    item = unit.item
    try:
        state = ForegroundState(item, cfg, cache)
    except (ImageReadError, ValueError, OSError) as exc:
        return [_failure(getattr(exc, "path", str(item.image)), _reason(exc), "foreground", item.stem,
                         slots=len(unit.slots), code=failure_code(exc))]
    probs = cfg.probabilities
    records = []
    for slot, bg_path in unit.slots:
        cid = composite_id(item.stem, slot)
        try:
            records.append(_compose_one(state, cid, slot, bg_path, probs, cache))
        except (ImageReadError, ValueError, OSError) as exc:
            records.append(_failure(getattr(exc, "path", bg_path), _reason(exc), "composite", cid,
                                    code=failure_code(exc)))
    return records


def make_composite(state: ForegroundState, rng: np.random.Generator, bg_path: str,
                   probs: augment.RouteProbabilities, cache: ImageCache):
    """One composite in memory: (image, fg, bg as uint8 RGB, ops, crop box, scaled size)."""
    cfg = state.cfg
    h, w = state.matte.shape
    p = augment.draw_params(rng, probs)
    ops: list[dict[str, Any]] = [{"op": "foreground", "method": state.fg_method}]
    bg_src = _background_source(p, bg_path, cfg, cache, w, h, ops)
    bg, box, scaled = augment.fit_background(bg_src, h, w, p.crop_fx, p.crop_fy)
    fg = _foreground(state, p, ops)
    if p.blur_kernel is not None:
        bg = augment.box_blur(bg, p.blur_kernel)
        ops.append({"op": "box_blur", "target": "bg", "kernel": p.blur_kernel})
    comp = augment.blend(state.matte.alpha, fg, bg)
    ops.append({"op": "blend"})
    if p.noise_seed is not None:
        comp = augment.add_gaussian_noise(comp, cfg.noise_sigma, np.random.default_rng(p.noise_seed))
        ops.append({"op": "gaussian_noise", "sigma": cfg.noise_sigma, "seed": p.noise_seed, "clip": [0, 255]})
    return augment.to_uint8(comp), fg, bg, ops, box, scaled


def _foreground(state: ForegroundState, p: augment.CompositeParams, ops: list[dict[str, Any]]) -> np.ndarray:
    """The composite's F: the BM3D-denoised estimate when the draw says so (recorded in ``ops``)."""
    if not p.denoise_fg:
        return state.fg8
    fg, est = state.denoised()
    ops.append({"op": "bm3d", "target": "fg", **est.record(), "profile": state.cfg.denoise_profile})
    return fg


BackgroundReader = Callable[[str, tuple[int, int] | None, bool], tuple[np.ndarray, float | None]]


def read_background(bg_path: str, cover: tuple[int, int] | None, denoise: bool, cfg: ComposeConfig,
                    cache: ImageCache) -> tuple[np.ndarray, float | None]:
    """(background source, BM3D sigma or None): with ``denoise`` the whole image denoised
    through the content cache, else :func:`read_image` with ``cover``."""
    if denoise:
        return denoise_cached(read_image(bg_path), cfg.denoise_sigma, cfg.denoise_profile, cache)
    return read_image(bg_path, cover=cover), None


def _background_source(p: augment.CompositeParams, bg_path: str, cfg: ComposeConfig, cache: ImageCache,
                       w: int, h: int, ops: list[dict[str, Any]], reader: BackgroundReader | None = None
                       ) -> np.ndarray:
    """The background before scaling. Denoising works on the whole source image before it is
    scaled and cropped (as the paper and the authors do; so it is cached and shared);
    otherwise a JPEG may be decoded at a reduced scale that still covers the output.
    ``reader``: (path, cover, denoise) -> (pixels, sigma) in place of :func:`read_background`
    (the same pixels from elsewhere: `rssn.planes`)."""
    def default(path: str, cover: tuple[int, int] | None, denoise: bool) -> tuple[np.ndarray, float | None]:
        return read_background(path, cover, denoise, cfg, cache)

    read = reader or default
    if p.denoise_bg:
        bg_src, sigma = read(bg_path, None, True)
        ops.append({"op": "bm3d", "target": "bg", "sigma": sigma,
                    "sigma_from": "--denoise-sigma" if cfg.denoise_sigma is not None else "whole image",
                    "profile": cfg.denoise_profile})
        return bg_src
    return read(bg_path, (w, h), False)[0]


def window_noise_rng(noise_seed: int) -> np.random.Generator:
    """The generator of a composite window's noise: its own stream, derived from the
    composite's noise seed (the whole-image composite uses ``default_rng(noise_seed)``)."""
    return np.random.default_rng([noise_seed, 1])


def make_composite_window(state: ForegroundState, rng: np.random.Generator, bg_path: str,
                          probs: augment.RouteProbabilities, cache: ImageCache, box: augment.Box,
                          bg_reader: BackgroundReader | None = None):
    """The ``box`` = (y, x, h, w) window of :func:`make_composite` with the same ``rng``:
    (image, fg, bg as uint8 RGB windows, ops). The same draws in the same order; the background
    is scaled whole (exact and cheap) but blurred, and everything blended, on the window (plus
    the blur's reach) only. Inside the window image, fg and bg equal the whole composite's,
    except that noise, when drawn, is drawn for the window alone (``window_noise_rng``: the
    same sigma at source resolution, another realisation). ``bg_reader``: where the background's
    pixels come from (:func:`_background_source`)."""
    cfg = state.cfg
    h, w = state.matte.shape
    p = augment.draw_params(rng, probs)
    ops: list[dict[str, Any]] = [{"op": "foreground", "method": state.fg_method}]
    bg_src = _background_source(p, bg_path, cfg, cache, w, h, ops, bg_reader)
    bg_view, _, _ = augment.fit_background_view(bg_src, h, w, p.crop_fx, p.crop_fy)
    fg = _foreground(state, p, ops)
    if p.blur_kernel is not None:
        bg = augment.box_blur_window(bg_view, p.blur_kernel, box)
        ops.append({"op": "box_blur", "target": "bg", "kernel": p.blur_kernel})
    else:
        bg = np.ascontiguousarray(augment.window(bg_view, box))
    comp = augment.blend_window(state.matte.values, fg, bg, box)
    ops.append({"op": "blend"})
    if p.noise_seed is not None:
        comp = augment.add_gaussian_noise(comp, cfg.noise_sigma, window_noise_rng(p.noise_seed))
        ops.append({"op": "gaussian_noise", "sigma": cfg.noise_sigma, "seed": p.noise_seed, "clip": [0, 255],
                    "window": list(box)})
    return augment.to_uint8(comp), np.ascontiguousarray(augment.window(fg, box)), bg, ops


def _compose_one(state: ForegroundState, cid: str, slot: int, bg_path: str,
                 probs: augment.RouteProbabilities, cache: ImageCache) -> dict[str, Any]:
    cfg = state.cfg
    h, w = state.matte.shape
    image, fg, bg, ops, box, scaled = make_composite(state, composite_rng(cfg.seed, state.item.stem, slot),
                                                     bg_path, probs, cache)

    out = cfg.out_dir
    ext = ".jpg" if cfg.image_format == "jpg" else ".png"
    paths = {
        "image": out / "image" / f"{cid}{ext}",
        "alpha": out / "alpha" / f"{cid}.png",
        "fg": out / "fg" / f"{cid}.png",
        "bg": out / "bg" / f"{cid}.png",
    }
    write_image(paths["fg"], fg, png_level=cfg.png_level)
    write_image(paths["bg"], bg, png_level=cfg.png_level)
    write_matte(paths["alpha"], state.matte, png_level=cfg.png_level)
    write_image(paths["image"], image, png_level=cfg.png_level, jpeg_quality=cfg.jpeg_quality)
    return {
        "key": f"composite:{cid}",
        "type": "composite",
        "id": cid,
        "fg": {"stem": state.item.stem, "kind": state.item.kind, "image": str(state.item.image),
               "matte": str(state.item.matte) if state.item.matte else None, "size": [w, h]},
        "bg": {"path": bg_path, "slot": slot, "scaled_size": list(scaled), "crop": list(box)},
        "ops": ops,
        "outputs": {k: _rel(v, out) for k, v in paths.items()},
    }


def _reason(exc: BaseException) -> str:
    return exc.reason if isinstance(exc, ImageReadError) else f"{exc.__class__.__name__}: {exc}"


def _failure(path: str, reason: str, scope: str, id: str | None = None, slots: int = 1,
             code: str = "error") -> dict[str, Any]:
    """A failure record; ``scope`` is input (pairing), foreground (all its slots) or composite;
    ``code`` one of `rssn.imageio.FAILURE_CODES` (what to do about it), ``reason`` the sentence."""
    return {"key": f"failure:{id or path}", "type": "failure", "scope": scope, "id": id, "code": code,
            "input": str(path), "reason": reason, "slots": slots if scope != "input" else 0}


# ------------------------------------------------------------------ executor


def shared_work(units: list[Unit], cfg: ComposeConfig) -> list[tuple[str, Any]]:
    """The per-image work the units' composites will draw, each distinct image once:
    ("fg", item) estimates a foreground and denoises it, ("bg", path) denoises a background.
    The draws are the composites' own (:func:`composite_rng`), so nothing unused is denoised."""
    probs = cfg.probabilities
    fgs: list[tuple[str, Any]] = []
    bgs: dict[str, None] = {}
    for unit in units:
        wants_fg = False
        for slot, bg_path in unit.slots:
            p = augment.draw_params(composite_rng(cfg.seed, unit.item.stem, slot), probs)
            wants_fg |= p.denoise_fg
            if p.denoise_bg:
                bgs.setdefault(bg_path)
        if wants_fg:
            fgs.append(("fg", unit.item))
    return fgs + [("bg", b) for b in bgs]


def prepare_shared(kind: str, target: Any, cfg: ComposeConfig) -> None:
    """Do one piece of shared work into the cache. A failure here is not recorded: the
    composites that need the image meet it again and record it against the right file."""
    cache = ImageCache(cfg.cache_root)
    if kind == "fg":
        ForegroundState(target, cfg, cache).ensure_denoised()
    else:
        ensure_denoised(read_image(target), cfg.denoise_sigma, cfg.denoise_profile, cache)


def run_units(units: list[Unit], cfg: ComposeConfig, on_done: Callable[[list[dict[str, Any]]], None],
              on_shared: Callable[[int], None] | None = None, chunk: int | None = None) -> None:
    """Schedule the units on the configured executor; ``on_done`` gets each unit's records.

    Units go in chunks; for each chunk the shared per-image work (foreground estimates and
    BM3D, the slow part) runs first as one flat list of tasks, so every worker stays busy and
    no image is denoised twice at the same time; then the chunk's composites, which find it all
    in the cache. ``on_shared(n)`` is called with the chunk's count of shared tasks, then with
    -1 as each one finishes.
    """
    from .executor import Executor

    chunk = chunk or max(32, 8 * cfg.workers)
    with Executor(cfg.workers, cfg.executor, cfg.ray_address, cfg.retries) as ex:
        for start in range(0, len(units), chunk):
            part = units[start:start + chunk]
            if cfg.probabilities.denoise_p > 0:
                shared = shared_work(part, cfg)
                if on_shared:
                    on_shared(len(shared))
                for _ in ex.run(prepare_shared, [(k, t, cfg) for k, t in shared]):  # failures: see prepare_shared
                    if on_shared:
                        on_shared(-1)
            for i, records, exc in ex.run(compose_unit, [(u, cfg) for u in part]):
                if exc is not None:  # a crashed worker fails its unit, not the run
                    unit = part[i]
                    records = [_failure(str(unit.item.image), f"worker failed: {exc.__class__.__name__}: {exc}",
                                        "foreground", unit.item.stem, slots=len(unit.slots), code="worker_crashed")]
                on_done(records)


# ------------------------------------------------------------------ stage 3: record


def run_compose(cfg: ComposeConfig, progress: bool = True) -> Summary:
    """Plan, execute and record a compose run; returns its summary (also written to summary.json)."""
    from tqdm import tqdm

    from . import provenance
    from .card import write_card

    t0 = time.perf_counter()
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(cfg.out_dir)
    manifest = Manifest(cfg.out_dir / "manifest.jsonl")
    prov = provenance.for_config(cfg)
    units, input_failures, summary = plan(cfg, manifest, prov)  # stops here when the rule leaves nothing
    withdrawn = provenance.withdraw_refused(manifest, cfg.out_dir, prov)
    if withdrawn:  # their slots are planned again over allowed backgrounds
        units, input_failures, summary = plan(cfg, manifest, prov)
    summary.withdrawn = withdrawn
    for f in input_failures:
        _record_failure(manifest, summary, _failure(f.path, f.reason, "input", code="unusable_input"))

    bar = tqdm(total=sum(len(u.slots) for u in units), unit="composite", disable=not progress, dynamic_ncols=True,
               desc="composites")
    prep = tqdm(total=0, unit="image", disable=not progress, dynamic_ncols=True, position=1, leave=False,
                desc="estimate/denoise")

    def on_shared(n: int) -> None:
        if n >= 0:
            prep.reset(total=n)
        else:
            prep.update(1)

    def on_done(records: list[dict[str, Any]]) -> None:
        for rec in records:
            if rec["type"] == "composite":
                manifest.append(prov.annotate(rec))
                manifest.discard(f"failure:{rec['id']}")
                manifest.discard(f"failure:{rec['fg']['stem']}")
                summary.made += 1
                bar.update(1)
            else:
                if rec.get("code") == "disk_full":  # by errno, not by the message's wording
                    raise DiskFullError(f"the disk of {cfg.out_dir} is full ({rec['reason']}); free some space "
                                        "and run the same command again: it resumes where it stopped")
                _record_failure(manifest, summary, rec)
                bar.update(rec["slots"])

    try:
        run_units(units, cfg, on_done, on_shared)
    finally:
        prep.close()
        bar.close()
    provenance.refresh(manifest, prov)
    manifest.compact()
    if cfg.image_format == "webdataset":
        from .shards import pack_shards

        pack_shards(cfg.out_dir, manifest, cfg.shard_size)
    provenance.write_composite_attribution(cfg.out_dir / "ATTRIBUTION.csv", manifest)
    write_card(cfg, manifest, prov)
    summary.seconds = time.perf_counter() - t0
    _write_summary(cfg, summary)
    return summary


def _record_failure(manifest: Manifest, summary: Summary, rec: dict[str, Any]) -> None:
    manifest.append(rec)
    summary.failures.append({"input": rec["input"], "code": rec.get("code", "error"), "reason": rec["reason"]})
    if rec["scope"] == "composite":
        summary.failed_composites += 1
    else:
        summary.failed_inputs += 1
        summary.failed_composites += rec["slots"]


def _write_summary(cfg: ComposeConfig, summary: Summary) -> None:
    from .imageio import atomic_write_json

    doc = {"command": "rssn compose", "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
           "summary": summary.as_dict()}
    atomic_write_json(cfg.out_dir / "summary.json", doc)


# ------------------------------------------------------------------ rssn denoise


def denoise_one(path: str, sigma: float | None, profile: str, cache_root: str) -> dict[str, Any]:
    """Denoise one background into the cache exactly as `rssn compose` would (whole image)."""
    t = time.perf_counter()
    try:
        img = read_image(path)
    except ImageReadError as exc:
        return {"key": f"failure:{path}", "type": "failure", "input": path, "reason": exc.reason}
    computed, used = ensure_denoised(img, sigma, profile, ImageCache(cache_root))
    return {"key": f"denoised:{path}", "type": "denoised", "input": path, "sigma": used,
            "profile": profile, "cached_before": not computed, "seconds": round(time.perf_counter() - t, 2)}


def run_denoise(folder: Path, cache_root: Path, sigma: float | None, profile: str, workers: int,
                progress: bool = True) -> list[dict[str, Any]]:
    """Pre-compute the BM3D cache for every image below ``folder``, in parallel."""
    from tqdm import tqdm

    from .executor import run_tasks

    paths = [str(p) for p in list_images(folder)]
    out = []
    bar = tqdm(total=len(paths), unit="image", disable=not progress, dynamic_ncols=True)
    for i, rec, exc in run_tasks(denoise_one, [(p, sigma, profile, str(cache_root)) for p in paths], workers=workers):
        out.append(rec if exc is None else {"key": f"failure:{paths[i]}", "type": "failure", "input": paths[i],
                                            "reason": f"{exc.__class__.__name__}: {exc}"})
        bar.update(1)
    bar.close()
    return sorted(out, key=lambda r: r["input"])
