"""What a data folder is, in one place: webdataset shards, `rssn compose` output, or foregrounds
in the common data-set layouts (photos with mattes, given foregrounds with mattes, RGBA images);
and the pairing of files by stem, with a second file of a stem reported, never dropped.

`rssn compose` (foregrounds), `rssn audit` (photos) and `gfm train` (training data) each ask
:func:`detect_layout` with the kinds they read."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .imageio import is_image_file

PHOTO_DIRS = ("original", "image")
MATTE_DIRS = ("mask", "alpha")
FG_DIRS = ("fg",)
COMPOSE_DIRS = ("image", "alpha", "fg", "bg")  # `rssn compose --format png|jpg` output
LAYOUTS = ("auto", "photo", "fg", "rgba")  # `rssn compose --layout`
FOREGROUND_KINDS = ("photo", "fg", "rgba")
FOLDER_KINDS = ("shards", "compose", *FOREGROUND_KINDS)


class LayoutError(ValueError):
    """The foreground folder's layout cannot be used; raised before any work."""


@dataclass(frozen=True)
class FolderLayout:
    """A data folder's kind and where its files are: ``shards`` (the tar files), ``compose``
    (image/ alpha/ fg/ bg/: ``image``, ``matte``, ``fg``, ``bg``), ``photo`` or ``fg`` (``image``
    the photos or given foregrounds, ``matte`` the mattes) or ``rgba`` (``image`` the folder)."""

    kind: str
    root: Path
    image: Path | None = None
    matte: Path | None = None
    fg: Path | None = None
    bg: Path | None = None
    shards: tuple[Path, ...] = ()


@dataclass(frozen=True)
class ForegroundItem:
    """One foreground: ``kind`` is photo (colours estimated), fg (colours given) or rgba."""

    stem: str
    kind: str
    image: Path
    matte: Path | None


@dataclass(frozen=True)
class CompositeFiles:
    """One composite of an `rssn compose` output folder: its four files, paired by stem."""

    stem: str
    image: Path
    alpha: Path
    fg: Path
    bg: Path


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


def shard_files(root: Path) -> list[Path]:
    """The webdataset shards of ``root``: ``*.tar`` in it, else in its shards/ folder."""
    return sorted(root.glob("*.tar")) or sorted((root / "shards").glob("*.tar"))


def detect_layout(fg_dir: str | os.PathLike, layout: str = "auto", *, kinds: tuple[str, ...] = FOREGROUND_KINDS,
                  prefer: str | None = None) -> FolderLayout:
    """The kind of ``fg_dir`` among ``kinds`` (FOLDER_KINDS) and its folders; raise LayoutError
    when none or several fit. ``auto`` takes shards, then a compose output (all four folders),
    when ``kinds`` holds them; then the one foreground layout that fits (the one of ``kinds``
    when it holds one only). ``prefer``: the foreground layout taken when photo and fg both fit
    (without it, that is an error naming --layout). ``layout``: one of LAYOUTS, forced."""
    root = Path(fg_dir)
    if not root.is_dir():
        raise LayoutError(f"{root}: foreground folder does not exist")
    if layout == "auto":
        tars = shard_files(root) if "shards" in kinds else []
        if tars:
            return FolderLayout("shards", root, shards=tuple(tars))
        if "compose" in kinds and all((root / d).is_dir() for d in COMPOSE_DIRS):
            image, alpha, fg, bg = (root / d for d in COMPOSE_DIRS)
            return FolderLayout("compose", root, image, alpha, fg, bg)
        foreground = [k for k in kinds if k in FOREGROUND_KINDS]
        if len(foreground) == 1:
            layout = foreground[0]
    photos, mattes, fgs = _present(root, PHOTO_DIRS), _present(root, MATTE_DIRS), _present(root, FG_DIRS)
    if layout == "rgba":
        return FolderLayout("rgba", root, root)
    if len(mattes) > 1:
        raise LayoutError(f"{root}: ambiguous layout, both {mattes[0]}/ and {mattes[1]}/ hold mattes; "
                          "point --fg at a folder with only one of them")
    if layout == "auto":
        candidates = []
        if photos and mattes:
            candidates.append("photo")
        if fgs and mattes:
            candidates.append("fg")
        if len(candidates) > 1 and prefer in candidates:
            candidates = [prefer]
        if len(candidates) > 1:
            raise LayoutError(f"{root}: ambiguous layout, it has {'/, '.join(photos + fgs)}/ and {mattes[0]}/; "
                              "choose with --layout photo (estimate colours from the photo) or --layout fg")
        if not candidates:
            if photos or fgs or mattes:
                have = ", ".join(d + "/" for d in photos + fgs + mattes)
                raise LayoutError(f"{root}: incomplete layout ({have}); expected original/ or image/ with "
                                  "mask/ or alpha/, or fg/ with alpha/, or RGBA images directly in the folder")
            return FolderLayout("rgba", root, root)
        layout = candidates[0]
    if layout == "photo":
        if len(photos) != 1 or not mattes:
            raise LayoutError(f"{root}: --layout photo needs exactly one of original/ or image/ and one of mask/ or alpha/")
        return FolderLayout("photo", root, root / photos[0], root / mattes[0])
    if layout == "fg":
        if not fgs or not mattes:
            raise LayoutError(f"{root}: --layout fg needs fg/ and alpha/ (or mask/)")
        return FolderLayout("fg", root, root / fgs[0], root / mattes[0])
    raise LayoutError(f"unknown layout {layout!r}; choose from {LAYOUTS}")


def find_foregrounds(fg_dir: str | os.PathLike, layout: str = "auto", *,
                     prefer: str | None = None) -> tuple[list[ForegroundItem], list[InputFailure]]:
    """All foregrounds of ``fg_dir`` sorted by stem, and the inputs that cannot be paired."""
    return foregrounds_of(detect_layout(fg_dir, layout, prefer=prefer))


def foregrounds_of(found: FolderLayout) -> tuple[list[ForegroundItem], list[InputFailure]]:
    """The foregrounds of a photo, fg or rgba folder sorted by stem, and the inputs that cannot
    be paired (a second file of a stem, a photo without a matte, a matte without a photo)."""
    if found.kind not in FOREGROUND_KINDS or found.image is None:
        raise LayoutError(f"{found.root}: a {found.kind} folder holds no foregrounds")
    image_dir, matte_dir = found.image, found.matte
    images, failures = files_by_stem(image_dir)
    if found.kind == "rgba" or matte_dir is None:
        return [ForegroundItem(s, "rgba", p, None) for s, p in sorted(images.items())], failures
    mattes, more = files_by_stem(matte_dir)
    failures += more
    items = []
    for stem, p in sorted(images.items()):
        if stem in mattes:
            items.append(ForegroundItem(stem, found.kind, p, mattes[stem]))
        else:
            failures.append(InputFailure(str(p), f"no matte with stem {stem!r} in {matte_dir}"))
    for stem, p in sorted(mattes.items()):
        if stem not in images:
            failures.append(InputFailure(str(p), f"matte without a photo: no image with stem {stem!r} in {image_dir}"))
    return items, failures


def composites_of(found: FolderLayout) -> tuple[list[CompositeFiles], list[InputFailure]]:
    """The composites of a compose output folder in stem order, and the files that cannot be
    used: a second file of a stem in any of the four folders (the first in name order is kept),
    and a photo without its matte, F or B."""
    if found.kind != "compose":
        raise LayoutError(f"{found.root}: a {found.kind} folder is not `rssn compose` output (image/ alpha/ fg/ bg/)")
    files: dict[str, dict[str, Path]] = {}
    failures: list[InputFailure] = []
    for d in COMPOSE_DIRS:
        files[d], dups = files_by_stem(found.root / d)
        failures += dups
    items = []
    for stem, img in files["image"].items():
        missing = [d for d in COMPOSE_DIRS[1:] if stem not in files[d]]
        if missing:
            failures.append(InputFailure(str(img), f"no {'/'.join(missing)} file with stem {stem!r}"))
            continue
        items.append(CompositeFiles(stem, img, files["alpha"][stem], files["fg"][stem], files["bg"][stem]))
    return items, failures
