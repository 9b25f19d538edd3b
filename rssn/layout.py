"""Find foregrounds in the common data-set layouts and pair photos with mattes by file stem."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .imageio import is_image_file

PHOTO_DIRS = ("original", "image")
MATTE_DIRS = ("mask", "alpha")
FG_DIRS = ("fg",)
LAYOUTS = ("auto", "photo", "fg", "rgba")


class LayoutError(ValueError):
    """The foreground folder's layout cannot be used; raised before any work."""


@dataclass(frozen=True)
class ForegroundItem:
    """One foreground: ``kind`` is photo (colours estimated), fg (colours given) or rgba."""

    stem: str
    kind: str
    image: Path
    matte: Path | None


@dataclass(frozen=True)
class InputFailure:
    path: str
    reason: str


def files_by_stem(folder: Path) -> tuple[dict[str, Path], list[InputFailure]]:
    """The image files directly in ``folder`` by stem; a second file with the same stem is a failure."""
    by_stem: dict[str, Path] = {}
    failures: list[InputFailure] = []
    for name in sorted(os.listdir(folder)):
        p = folder / name
        if not is_image_file(name) or not p.is_file():
            continue
        stem = p.stem
        if stem in by_stem:
            failures.append(InputFailure(str(p), f"another file has the same stem {stem!r}: {by_stem[stem]}"))
            continue
        by_stem[stem] = p
    return by_stem, failures


def _present(root: Path, names: tuple[str, ...]) -> list[str]:
    return [n for n in names if (root / n).is_dir()]


def detect_layout(fg_dir: str | os.PathLike, layout: str = "auto") -> tuple[str, Path, Path]:
    """Return (kind, image folder, matte folder); raise LayoutError when none or several fit."""
    root = Path(fg_dir)
    if not root.is_dir():
        raise LayoutError(f"{root}: foreground folder does not exist")
    photos, mattes, fgs = _present(root, PHOTO_DIRS), _present(root, MATTE_DIRS), _present(root, FG_DIRS)
    if layout == "rgba":
        return "rgba", root, root
    if len(mattes) > 1:
        raise LayoutError(f"{root}: ambiguous layout, both {mattes[0]}/ and {mattes[1]}/ hold mattes; "
                          "point --fg at a folder with only one of them")
    if layout == "auto":
        candidates = []
        if photos and mattes:
            candidates.append("photo")
        if fgs and mattes:
            candidates.append("fg")
        if len(candidates) > 1:
            raise LayoutError(f"{root}: ambiguous layout, it has {'/, '.join(photos + fgs)}/ and {mattes[0]}/; "
                              "choose with --layout photo (estimate colours from the photo) or --layout fg")
        if not candidates:
            if photos or fgs or mattes:
                have = ", ".join(d + "/" for d in photos + fgs + mattes)
                raise LayoutError(f"{root}: incomplete layout ({have}); expected original/ or image/ with "
                                  "mask/ or alpha/, or fg/ with alpha/, or RGBA images directly in the folder")
            return "rgba", root, root
        layout = candidates[0]
    if layout == "photo":
        if len(photos) != 1 or not mattes:
            raise LayoutError(f"{root}: --layout photo needs exactly one of original/ or image/ and one of mask/ or alpha/")
        return "photo", root / photos[0], root / mattes[0]
    if layout == "fg":
        if not fgs or not mattes:
            raise LayoutError(f"{root}: --layout fg needs fg/ and alpha/ (or mask/)")
        return "fg", root / fgs[0], root / mattes[0]
    raise LayoutError(f"unknown layout {layout!r}; choose from {LAYOUTS}")


def find_foregrounds(fg_dir: str | os.PathLike, layout: str = "auto") -> tuple[list[ForegroundItem], list[InputFailure]]:
    """All foregrounds of ``fg_dir`` sorted by stem, and the inputs that cannot be paired."""
    kind, image_dir, matte_dir = detect_layout(fg_dir, layout)
    images, failures = files_by_stem(image_dir)
    if kind == "rgba":
        return [ForegroundItem(s, "rgba", p, None) for s, p in sorted(images.items())], failures
    mattes, more = files_by_stem(matte_dir)
    failures += more
    items = []
    for stem, p in sorted(images.items()):
        if stem in mattes:
            items.append(ForegroundItem(stem, kind, p, mattes[stem]))
        else:
            failures.append(InputFailure(str(p), f"no matte with stem {stem!r} in {matte_dir}"))
    for stem, p in sorted(mattes.items()):
        if stem not in images:
            failures.append(InputFailure(str(p), f"matte without a photo: no image with stem {stem!r} in {image_dir}"))
    return items, failures
