"""Training data for GFM: photos with mattes (ORI-Track) or `rssn compose` output (COMP-Track).

Every random choice of a sample (crop size and place, flip) comes from a generator derived
from (seed, epoch, index), so an epoch is the same whatever the number of loader workers and
a resumed run sees exactly the data the uninterrupted one would have.

Samples are integer tensors (uint8; uint16 for 16-bit mattes): they cross process boundaries
and the host-device copy at a quarter of float32's bytes, and :func:`to_device` makes the float
batch (ImageNet normalisation included) on the training device. Folders, shards and stores
(`gfm.store`) share :func:`window_sample`, so they give equal tensors for equal draws.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from rssn.imageio import ImageReadError, read_image, read_matte
from rssn.layout import LayoutError, composites_of, detect_layout, find_foregrounds, foregrounds_of
from rssn.seeding import derive_rng

from .losses import FT_BT_KERNEL

log = logging.getLogger(__name__)  # a training sample that fails to load: named, counted (``replaced``)

if TYPE_CHECKING:
    from rssn.shards import TarPart

TRAINING_KINDS = ("shards", "compose", "photo")  # the folders `gfm train --data` reads (rssn.layout)
CROP_SIZES = (640, 960, 1280)
TARGET_MARGIN = FT_BT_KERNEL  # more than the reach of the largest target kernel
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True)
class Sample:
    """One training sample's files: paths, or members of webdataset shards."""

    name: str
    image: Path | TarPart
    alpha: Path | TarPart
    fg: Path | TarPart | None = None
    bg: Path | TarPart | None = None


def find_samples(folder: str | Path) -> tuple[list[Sample], list[tuple[str, str]]]:
    """The samples of one data folder and the (file, reason) pairs that could not be paired.

    :func:`rssn.layout.detect_layout` says what the folder is: webdataset shards, `rssn compose`
    output (image/ alpha/ fg/ bg/; the composition loss uses fg and bg) or photos with mattes
    (original|image + mask|alpha). A second file of a stem is a failure, never dropped.
    """
    root = Path(folder)
    try:
        found = detect_layout(root, kinds=TRAINING_KINDS)
    except LayoutError as exc:
        raise LayoutError(f"{exc}; or give `rssn compose` output (image/ alpha/ fg/ bg/)") from None
    if found.kind == "shards":  # written by `rssn compose --format webdataset`
        from rssn.shards import index_shards

        samples, failures = [], []
        for key, parts in sorted(index_shards(found.shards).items()):
            missing = [k for k in ("image", "alpha") if k not in parts]
            if missing:
                failures.append((f"{found.shards[0].parent}/{key}", f"shard sample without {'/'.join(missing)}"))
                continue
            samples.append(Sample(key, parts["image"], parts["alpha"], parts.get("fg"), parts.get("bg")))
        return samples, failures
    if found.kind == "compose":
        comps, fails = composites_of(found)
        return [Sample(c.stem, c.image, c.alpha, c.fg, c.bg) for c in comps], [(f.path, f.reason) for f in fails]
    items, fails = foregrounds_of(found)
    # a photo layout pairs every item with a matte (the test only narrows the type)
    return [Sample(i.stem, i.image, i.matte) for i in items if i.matte is not None], [(f.path, f.reason) for f in fails]


def check_samples(samples: list[Sample]) -> tuple[list[Sample], list[tuple[str, str]]]:
    """Keep the samples whose files open and agree in (displayed) size; headers only: cheap."""
    from rssn.imageio import exif_swaps_axes, open_checked

    good, bad = [], []
    for s in samples:
        if not isinstance(s.image, Path):  # shard members are checked when they are read
            good.append(s)
            continue
        try:
            sizes = {}
            for kind in ("image", "alpha", "fg", "bg"):
                p = getattr(s, kind)
                if p is None:
                    continue
                im = open_checked(p)
                w, h = im.size
                sizes[kind] = (h, w) if exif_swaps_axes(im) else (w, h)
                im.close()
            if len(set(sizes.values())) > 1:
                raise ImageReadError(s.alpha, f"sizes differ within the sample: {sizes}")
            good.append(s)
        except ImageReadError as exc:
            bad.append((exc.path, exc.reason))
    return good, bad


def _source(p):
    """A path, or the bytes of a shard member (read now)."""
    return p.load() if hasattr(p, "load") else p


def choose_crop(alpha: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    """(y, x, size): a square crop of 640, 960 or 1280 (smaller when the image is), centred
    on a transition pixel (0 < alpha < full; matte values or a float matte) half of the time."""
    h, w = alpha.shape
    top = _top_of(alpha)
    return choose_crop_at(h, w, lambda: _transition_flat(alpha, top), rng)


def _transition_flat(alpha: np.ndarray, top: float) -> np.ndarray:
    """Row-major flat indices of the pixels with 0 < alpha < top (np.nonzero's order)."""
    return np.flatnonzero((alpha > 0) & (alpha < top))


def choose_crop_at(h: int, w: int, transitions, rng: np.random.Generator) -> tuple[int, int, int]:
    """:func:`choose_crop` for an image of ``h`` x ``w`` whose transition pixels come from
    ``transitions()`` (row-major flat indices; called only for a centred crop, so a store can
    keep them precomputed and a folder compute them only when needed)."""
    size = min(int(CROP_SIZES[int(rng.integers(len(CROP_SIZES)))]), h, w)
    centred = rng.random() < 0.5
    u = rng.random(3)
    if centred:
        flat = transitions()
        if len(flat):
            i = min(int(u[0] * len(flat)), len(flat) - 1)
            yi, xi = divmod(int(flat[i]), w)
            y = int(np.clip(yi - size // 2, 0, h - size))
            x = int(np.clip(xi - size // 2, 0, w - size))
            return y, x, size
    return int(u[1] * (h - size + 1)), int(u[2] * (w - size + 1)), size


# bump when target_plane's bits change: it names the target planes kept with foreground planes
TARGETS_VERSION = "1"
ROSTA_BITS = {"tt": (0, 3), "ft": (2, 1), "bt": (3, 1)}  # (shift, mask) of each RoSTa's class in a target plane


def target_plane(alpha: np.ndarray, rostas: tuple[str, ...] = ("tt", "ft", "bt")) -> np.ndarray:
    """The glance classes of every RoSTa in ``rostas`` packed into one uint8 plane (bits 0-1:
    TT class 0/1/2, bit 2: FT mask, bit 3: BT mask), from a float matte in [0, 1]. The focus
    weight and target follow from these classes and alpha (:func:`window_targets`), so one byte
    per pixel holds every target of every RoSTa."""
    from .losses import glance_targets

    out = np.zeros(alpha.shape, np.uint8)
    for r in rostas:
        shift, _ = ROSTA_BITS[r]
        out |= glance_targets(alpha, r)[0].astype(np.uint8) << shift
    return out


def window_targets(bits: np.ndarray, values: np.ndarray, top: int | float, rosta: str) -> dict[str, np.ndarray]:
    """The batch targets of a window from its target plane and matte values (uint8/uint16 on
    the 0..``top`` scale): ``glance`` classes (uint8), ``transition`` weight (uint8 0/1) and
    ``focus`` target (matte's type and scale), keyed as :func:`gfm.losses.all_glance_targets`."""
    out = {}
    for r in (("tt", "ft", "bt") if rosta == "rim" else (rosta,)):
        shift, mask = ROSTA_BITS[r]
        cls = (bits >> shift) & mask
        if r == "tt":
            weight, focus = cls == 1, values
        elif r == "ft":
            weight, focus = (cls == 0) & (values > 0), values
        else:
            weight, focus = (cls == 1) & (values < top), np.where(cls == 1, top - values, 0).astype(values.dtype)
        sfx = "" if rosta != "rim" else f"_{r}"
        out.update({f"glance{sfx}": cls, f"transition{sfx}": weight.astype(np.uint8), f"focus{sfx}": focus})
    return out


def nearest_index(size: int, crop: int) -> np.ndarray:
    """The source row (or column) of each of ``crop`` output pixels in nearest-neighbour scaling
    of ``size`` pixels: the pixel under each output pixel's centre."""
    return np.minimum(((np.arange(crop) + 0.5) * (size / crop)).astype(np.intp), size - 1)


def window_sample(image: np.ndarray, values: np.ndarray, bits: np.ndarray, rosta: str,
                  fg: np.ndarray | None, bg: np.ndarray | None, size: int, crop: int, flip: bool) -> dict[str, torch.Tensor]:
    """The tensors of one sample from its crop window (every array ``size`` x ``size``; ``bits``
    its :func:`target_plane`): image, matte, F and B resized once each to ``crop`` (area when
    shrinking, bilinear when enlarging), classes and focus weights sampled at the nearest pixel
    (so they are computed on ``crop`` x ``crop`` pixels, not the window), then flipped. All
    integer (uint8; uint16 for 16-bit mattes), so batches travel small and exact;
    :func:`to_device` makes the float batch."""
    interp = cv2.INTER_AREA if size > crop else cv2.INTER_LINEAR
    top = _top_of(values)

    def rs(a: np.ndarray) -> np.ndarray:
        r = cv2.resize(a, (crop, crop), interpolation=interp)
        return cv2.flip(r, 1) if flip else r

    rows = nearest_index(size, crop)
    cols = rows[::-1] if flip else rows
    near = np.ix_(rows, cols)
    img = _chw(rs(image))
    alpha = rs(values)
    sample = {"image": img, "alpha": _hw1(alpha), "has_fgbg": torch.tensor(fg is not None and bg is not None)}
    for key, t in window_targets(bits[near], values[near], top, rosta).items():
        if key.startswith("glance"):
            sample[key] = torch.from_numpy(t)
        elif key.startswith("transition"):
            sample[key] = _hw1(t)
        elif key.endswith("bt") or rosta == "bt":  # (1 - alpha) inside the dilated mask: resized itself
            mask = (bits >> ROSTA_BITS["bt"][0]) & 1
            sample[key] = _hw1(rs(np.where(mask == 1, top - values, 0).astype(values.dtype)))
        else:  # TT and FT: the focus target is alpha
            sample[key] = _hw1(alpha.copy())
    sample["fg"] = _chw(rs(fg)) if fg is not None else torch.zeros_like(img)
    sample["bg"] = _chw(rs(bg)) if bg is not None else torch.zeros_like(img)
    return sample


def served(sample: dict[str, torch.Tensor], replaced: int) -> dict[str, torch.Tensor]:
    """``sample`` with ``replaced``: how many samples failed to load before it was served in
    their place (0 normally). It travels with the data, so the count reaches the trainer from
    loader processes too (`gfm train` sums it per epoch: history.json's ``train_replaced``)."""
    sample["replaced"] = torch.tensor(replaced, dtype=torch.int64)
    return sample


def _scale_of(t: torch.Tensor) -> float:
    """The top of an integer tensor's scale: 65535 for a 16-bit matte, else 255."""
    return 65535.0 if t.dtype in (torch.uint16, torch.int32) else 255.0


def to_device(batch: dict[str, torch.Tensor], device: torch.device | str,
              input_range: str = "imagenet") -> dict[str, torch.Tensor]:
    """The float batch the model and losses take, made on ``device`` from an integer batch
    (copied non-blocking: from pinned memory on CUDA it overlaps the previous step):
    ``image`` normalised for the model, ``image_raw``, ``fg``, ``bg``, ``alpha``, ``focus*`` in
    [0, 1], ``transition*`` 0/1 float, ``glance*`` int64 classes. Same code on CPU and CUDA.
    ``replaced`` (:func:`served`) is a count, not an input: left out."""
    device = torch.device(device)
    b = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "replaced"}
    out: dict[str, torch.Tensor] = {"has_fgbg": b["has_fgbg"]}
    raw = b["image"].float() / 255.0
    out["image_raw"] = raw
    if input_range == "imagenet":
        mean = torch.as_tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.as_tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        out["image"] = (raw - mean) / std
    elif input_range == "0-255":
        out["image"] = b["image"].float()
    else:
        raise ValueError(f"unknown input range {input_range!r}")
    for k, v in b.items():
        if k in ("image", "has_fgbg"):
            continue
        if k.startswith("glance"):
            out[k] = v.long()
        elif k.startswith("transition"):
            out[k] = v.float()
        elif k in ("fg", "bg"):
            out[k] = v.float() / 255.0
        elif v.dtype.is_floating_point:
            out[k] = v
        else:
            out[k] = v.float() / _scale_of(v)
    return out


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack samples into a batch; 8-bit mattes meet 16-bit ones on the 16-bit scale (x 257,
    exact), so a set may mix them."""
    out = {}
    for k in samples[0]:
        ts = [s[k] for s in samples]
        if len({t.dtype for t in ts}) > 1:
            ts = [t.to(torch.int32) * 257 if t.dtype == torch.uint8 else t.to(torch.int32) for t in ts]
        out[k] = torch.stack(ts)
    return out


def model_input(image: np.ndarray, input_range: str = "imagenet") -> torch.Tensor:
    """RGB HxWx3 on the 0-255 scale (uint8 or float) -> the float tensor 3xHxW a model takes:
    ``imagenet`` normalised with ImageNet's mean and std (models trained here), ``0-255`` the
    values as they are (the authors' published models)."""
    x = image.astype(np.float32)
    if input_range == "imagenet":
        x = (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    elif input_range != "0-255":
        raise ValueError(f"unknown input range {input_range!r}")
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def photo_foreground_background(image: np.ndarray, alpha: np.ndarray, cache) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form F and B (uint8) of a photo with its matte, for the composition loss on
    photos (the authors use closed-form F and B for the ORI-Track); cached by content in the
    rssn cache, so each photo is solved once across runs."""
    from rssn.augment import to_uint8
    from rssn.cache import content_key
    from rssn.closed_form_band import estimate_foreground_cf_band
    from rssn.foreground import ALGORITHM_VERSION

    key = content_key(image, alpha, "photo-fb", ALGORITHM_VERSION["cf"])
    f, b = cache.get("photo-f", key), cache.get("photo-b", key)
    if f is None or b is None:
        fg, bg = estimate_foreground_cf_band(image.astype(np.float64) / 255.0, alpha.astype(np.float64),
                                             return_background=True)
        f, b = to_uint8(fg * 255.0), to_uint8(bg * 255.0)
        cache.put("photo-f", key, f)
        cache.put("photo-b", key, b)
    return f, b


class MattingDataset(Dataset):
    """Augmented training samples: crop, resize to ``crop``, flip, targets for ``rosta``."""

    def __init__(self, samples: list[Sample], rosta: str, crop: int = 320, seed: int = 0,
                 photo_fgbg_cache: str | Path | None = None, input_range: str = "imagenet"):
        """``photo_fgbg_cache``: the rssn cache folder; when given, photos without F and B get
        closed-form ones (:func:`photo_foreground_background`) and the composition loss."""
        self.samples, self.rosta, self.crop, self.seed = samples, rosta, crop, seed
        self.photo_fgbg_cache = photo_fgbg_cache
        self.input_range = input_range
        self.epoch = 0
        self.replaced = 0  # samples that failed to load and were replaced, in this process

    def set_epoch(self, epoch: int) -> None:
        """Draw epoch ``epoch``'s crops and flips (call before each epoch; workers see it)."""
        self.epoch = epoch

    @property
    def names(self) -> list[str]:
        """The sample names, in index order."""
        return [s.name for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        for attempt in range(len(self.samples)):  # a file that fails to decode is replaced by the next
            i = (index + attempt) % len(self.samples)
            try:
                return served(self._load(i), attempt)
            except (ImageReadError, OSError, ValueError) as exc:
                self.replaced += 1
                log.warning("skipping %s: %s (replaced by the next sample; %d in this process)",
                            self.samples[i].name, exc, self.replaced)
        raise RuntimeError("no training sample could be read")

    def _load(self, index: int) -> dict[str, torch.Tensor]:
        s = self.samples[index]
        rng = derive_rng(self.seed, "sample", self.epoch, index)
        image = read_image(_source(s.image))
        alpha = read_matte(_source(s.alpha)).values
        if alpha.shape != image.shape[:2]:
            raise ImageReadError(s.alpha, f"matte size {alpha.shape[::-1]} differs from the photo's {image.shape[1::-1]}")
        fg = read_image(_source(s.fg)) if s.fg else None
        bg = read_image(_source(s.bg)) if s.bg else None
        if (fg is None or bg is None) and self.photo_fgbg_cache is not None:
            from rssn.cache import ImageCache

            fg, bg = photo_foreground_background(image, alpha.astype(np.float32) / np.float32(_top_of(alpha)),
                                                 ImageCache(self.photo_fgbg_cache))
        return self.augment(image, alpha, fg, bg, rng)

    def augment(self, image: np.ndarray, alpha: np.ndarray, fg: np.ndarray | None, bg: np.ndarray | None,
                rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Crop, resize, flip and make the targets of one sample (from the whole matte, then
        cropped: a crop edge never invents a transition). ``alpha``: the matte's stored values
        (uint8 or uint16, batches stay integer) or a float matte in [0, 1]."""
        y, x, size, flip = draw_window(alpha, rng)
        win = (slice(y, y + size), slice(x, x + size))
        return self.window_tensors(alpha, y, x, size, flip, image[win], fg[win] if fg is not None else None,
                                   bg[win] if bg is not None else None)

    def _rostas(self) -> tuple[str, ...]:
        return ("tt", "ft", "bt") if self.rosta == "rim" else (self.rosta,)

    def window_tensors(self, alpha: np.ndarray, y: int, x: int, size: int, flip: bool, image: np.ndarray,
                       fg: np.ndarray | None, bg: np.ndarray | None,
                       targets: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """The sample of the window (y, x, size) of the whole matte ``alpha``, given the
        window's ``image``, ``fg`` and ``bg`` (size x size): targets from the matte around the
        window (or cut from ``targets``, the whole matte's :func:`target_plane` for this rosta,
        when it was made once), then :func:`window_sample`."""
        if targets is not None:
            bits = targets[y:y + size, x:x + size]
        else:
            top = _top_of(alpha)
            # the targets of the window equal those of the whole matte: morphology reaches at most
            # TARGET_MARGIN pixels, so the window plus that margin (clipped at the image) suffices
            m = TARGET_MARGIN
            y0, x0 = max(0, y - m), max(0, x - m)
            around = alpha[y0:y + size + m, x0:x + size + m]
            bits = target_plane(around.astype(np.float32) / np.float32(top), self._rostas())
            bits = bits[y - y0:y - y0 + size, x - x0:x - x0 + size]
        return window_sample(image, alpha[y:y + size, x:x + size], bits, self.rosta, fg, bg, size, self.crop, flip)


def draw_window(alpha: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int, bool]:
    """(y, x, size, flip) of a sample: :func:`choose_crop`, then the flip, from ``rng``."""
    y, x, size = choose_crop(alpha, rng)
    return y, x, size, bool(rng.random() < 0.5)


def _top_of(values: np.ndarray) -> int | float:
    """Full opacity on a matte's scale: 255 (uint8), 65535 (uint16) or 1.0 (float)."""
    return {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}.get(values.dtype, 1.0)


def _chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def _hw1(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))[None]


class OnTheFlyDataset(MattingDataset):
    """Composites made with the `rssn` route while training: K backgrounds per foreground per
    epoch, drawn anew each epoch from (seed, epoch, foreground, k). Foreground estimates and
    BM3D results come from the same content cache as `rssn compose`.

    The crop window is drawn first (it needs only the matte) and only the window is composed:
    background blur, blend and noise run on the window (plus the blur's reach), not the whole
    image. ``whole_image = True`` composes the whole image, then crops (the earlier path, kept
    for the benchmark and the equality tests).

    Each foreground and background is decoded once: its first use (in any worker) writes its
    pixels (for a foreground its matte, estimate and, when drawn, BM3D result; for a background
    the pixels at the scale it is decoded at, or denoised) as raw planes in the rssn cache
    (:mod:`rssn.planes`, ``CACHE/planes``); later samples memory-map them and read only what
    the window needs. ``plane_cache = False`` decodes every file for every sample instead (the
    path before; the same tensors); the whole-image path always does."""

    whole_image: bool = False
    plane_cache: bool = True

    def __init__(self, fg_dir: str | Path, bg_dir: str | Path, rosta: str, crop: int = 320, seed: int = 0,
                 per_fg: int = 5, compose_options: dict | None = None):
        from rssn.compose import ComposeConfig
        from rssn.imageio import list_images

        items, self.failures = find_foregrounds(fg_dir)
        self.items = items
        self.backgrounds = [str(p) for p in list_images(bg_dir)]
        if not self.backgrounds:
            raise ValueError(f"{bg_dir}: no background images")
        self.per_fg = per_fg
        self.compose_cfg = ComposeConfig(fg_dir=Path(fg_dir), bg_dir=Path(bg_dir), out_dir=Path("."),
                                         seed=seed, **(compose_options or {}))
        super().__init__([Sample(i.stem, i.image, i.matte or i.image) for i in items], rosta, crop, seed)

    def __len__(self) -> int:
        return len(self.items) * self.per_fg

    @property
    def names(self) -> list[str]:
        """``STEM-kK``: the K-th composite of each foreground, in index order."""
        return [f"{it.stem}-k{k}" for it in self.items for k in range(self.per_fg)]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        for attempt in range(len(self.items)):
            i = (index // self.per_fg + attempt) % len(self.items)
            try:
                return served(self._compose(i, index % self.per_fg), attempt)
            except (ImageReadError, OSError, ValueError) as exc:
                self.replaced += 1
                log.warning("skipping %s: %s (replaced by the next foreground; %d in this process)",
                            self.items[i].stem, exc, self.replaced)
        raise RuntimeError("no foreground could be composited")

    def _compose(self, fg_index: int, k: int) -> dict[str, torch.Tensor]:
        w = self.composite_window(fg_index, k)
        return self.window_tensors(w.values, w.y, w.x, w.size, w.flip, w.image, w.fg, w.bg, w.targets)

    def composite_window(self, fg_index: int, k: int) -> CompositeWindow:
        """The crop window of composite ``k`` of foreground ``fg_index`` in this epoch, before
        resizing. The crop and flip come from the sample's generator and need only the matte, so
        they are drawn first and the route composes only the window
        (:func:`rssn.compose.make_composite_window`); ``whole_image`` composes the whole image
        and crops it (the path before the window one; same draws, same tensors except the
        noise's realisation)."""
        from rssn.cache import ImageCache
        from rssn.compose import ForegroundState, make_composite, make_composite_window
        from rssn.planes import PlaneForeground, background_reader, open_foreground

        item = self.items[fg_index]
        cfg = self.compose_cfg
        cache = ImageCache(cfg.cache_root)
        state = (ForegroundState(item, cfg, cache) if self.whole_image or not self.plane_cache
                 else open_foreground(item, cfg, cache))
        pick = derive_rng(self.seed, "train-background", self.epoch, item.stem, k)
        bg_path = self.backgrounds[int(pick.integers(len(self.backgrounds)))]
        rng = derive_rng(self.seed, "train-composite", self.epoch, item.stem, k)
        values = state.matte.values
        sample_rng = derive_rng(self.seed, "sample", self.epoch, fg_index, k)
        targets = None
        if isinstance(state, PlaneForeground):  # transition pixels and targets found once, with the planes
            planes = state
            h, w = values.shape
            y, x, size = choose_crop_at(h, w, lambda: planes.transitions, sample_rng)
            flip = bool(sample_rng.random() < 0.5)  # as draw_window
            rostas = self._rostas()
            targets = planes.derived(f"targets-{'-'.join(rostas)}-{TARGETS_VERSION}",
                                     lambda: target_plane(values.astype(np.float32) / np.float32(_top_of(values)),
                                                          rostas))
        else:
            y, x, size, flip = draw_window(values, sample_rng)
        if self.whole_image:
            image, fg, bg, ops, _box, _scaled = make_composite(state, rng, bg_path, cfg.probabilities, cache)
            win = (slice(y, y + size), slice(x, x + size))
            image, fg, bg = image[win], fg[win], bg[win]
        else:
            image, fg, bg, ops = make_composite_window(
                state, rng, bg_path, cfg.probabilities, cache, (y, x, size, size),
                background_reader(cfg, cache) if self.plane_cache else None)
        return CompositeWindow(values, y, x, size, flip, image, fg, bg, ops, targets)


@dataclass(frozen=True)
class CompositeWindow:
    """One on-the-fly composite's crop window before resizing: the whole matte ``values``,
    the window (y, x, size), the flip, the window's image, F and B (uint8), and the route's ops."""

    values: np.ndarray
    y: int
    x: int
    size: int
    flip: bool
    image: np.ndarray
    fg: np.ndarray
    bg: np.ndarray
    ops: list
    targets: np.ndarray | None = None  # the whole matte's target_plane, when kept with the planes


def open_training_set(path: str | Path | list[str | Path] | None = None, rosta: str = "tt", crop: int = 320,
                      seed: int = 0, *, fg: str | Path | None = None, bg: str | Path | None = None,
                      per_fg: int = 5, photo_fgbg: bool = False, cache_dir: str | Path | None = None) -> Dataset:
    """The training set `gfm train` would see, as a ``torch.utils.data.Dataset``.

    ``path``: a folder (photos with mattes, or `rssn compose` output), webdataset shards, a
    store written by `gfm pack`, or a list of them (stores are not mixed with folders); or
    ``fg`` and ``bg`` for composites made on the fly. Every dataset has ``set_epoch(e)``,
    ``names`` and ``ds[i]``: a dict of integer tensors (:func:`window_sample`, with ``replaced``:
    :func:`served`); batch them with
    :func:`collate` and make them float on the device with :func:`to_device`.
    ``photo_fgbg``: closed-form F and B for photos (solved once, kept in ``cache_dir``, the rssn
    cache by default); a store holds them when it was packed with them. Arguments are checked
    first: a wrong one is a ValueError saying what was given and what to pass.
    """
    if rosta not in ("tt", "ft", "bt", "rim"):
        raise ValueError(f"open_training_set: rosta {rosta!r}; pass one of 'tt', 'ft', 'bt', 'rim'")
    if isinstance(crop, bool) or not isinstance(crop, int) or crop < 32 or crop % 32:
        raise ValueError(f"open_training_set: crop {crop!r}; pass a positive multiple of 32 (the encoder "
                         "halves the size five times), e.g. 320")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"open_training_set: seed {seed!r}; pass an integer")
    if isinstance(per_fg, bool) or not isinstance(per_fg, int) or per_fg < 1:
        raise ValueError(f"open_training_set: per_fg {per_fg!r}; pass an integer >= 1")
    for name, value in (("fg", fg), ("bg", bg)):
        if value is not None and not Path(value).is_dir():
            raise ValueError(f"open_training_set: {name} {str(value)!r} is not a folder; pass the folder of "
                             f"{'foregrounds' if name == 'fg' else 'backgrounds'}")
    if fg is not None or bg is not None:
        if fg is None or bg is None:
            raise ValueError("fg and bg go together")
        return OnTheFlyDataset(fg, bg, rosta, crop, seed, per_fg,
                               {"cache_dir": Path(cache_dir)} if cache_dir else None)
    if path is None:
        raise ValueError("give a path (folder, shards or store), or fg and bg")
    paths = [Path(p) for p in (path if isinstance(path, (list, tuple)) else [path])]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ValueError(f"open_training_set: {', '.join(missing)} does not exist; pass a folder of photos with "
                         "mattes, `rssn compose` output, webdataset shards or a `gfm pack` store")
    from .store import StoreDataset, is_store

    stores = [p for p in paths if is_store(p)]
    if stores:
        if len(stores) != len(paths):
            raise ValueError("stores and folders cannot be mixed; pack the folders too (`gfm pack`)")
        return StoreDataset(stores, rosta, crop, seed, photo_fgbg=photo_fgbg)
    samples: list[Sample] = []
    for p in paths:
        samples += find_samples(p)[0]
    samples, _ = check_samples(samples)
    cache = None
    if photo_fgbg:
        from rssn.compose import default_cache_dir

        cache = str(cache_dir or default_cache_dir())
    return MattingDataset(samples, rosta, crop, seed, photo_fgbg_cache=cache)
