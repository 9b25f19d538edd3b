"""Where the inputs of `rssn compose` came from: attribution files, the licence rule, and the
attribution each composite carries.

An attribution file is the CSV that `bg20k build` writes (``id,url,license,author,source``):
one row per image, matched to an input by file stem (the ``id`` column, or a file name whose
stem it is). An input without a row has an unknown licence. The licence rule
(``--licenses``, ``--require-license``) is `bg20k build`'s, from :mod:`bg20k.licenses`: an input
that fails it is never drawn, and composites already made from one are withdrawn when the
command runs again.
"""
from __future__ import annotations

import csv
import functools
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bg20k.licenses import license_rejection, normalise_license

from .imageio import IMAGE_EXTENSIONS, list_images

ATTRIBUTION_NAME = "ATTRIBUTION.csv"
COLUMNS = ("id", "url", "license", "author", "source")
REQUIRED = ("id", "license", "author", "source")  # url may be absent (a folder source has none)
_COLUMN_ALIASES = {"licence": "license"}
# licence values that say "no licence on record"
NO_LICENCE = frozenset({"", "unknown", "none", "n/a", "na", "-", "?"})
_READABLE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")
UNKNOWN = "unknown"


class AttributionError(ValueError):
    """An attribution file that cannot be used; the message names the file and the line."""


class LicenceRuleError(ValueError):
    """The licence rule leaves nothing to compose."""


@dataclass(frozen=True)
class Attribution:
    """One row of an attribution file; ``license`` is '' when none is on record."""

    id: str
    url: str = ""
    license: str = ""
    author: str = ""
    source: str = ""

    def record(self) -> dict[str, str]:
        """The form stored in manifest records and OUT/ATTRIBUTION.csv."""
        return {"id": self.id, "url": self.url, "license": self.license or UNKNOWN, "author": self.author,
                "source": self.source}


@functools.lru_cache(maxsize=4096)
def licence_key(license: str) -> str:
    """The normalised licence (``cc-by-4.0``), or 'unknown'."""
    return normalise_license(license) if license else UNKNOWN


def path_stem(path: str) -> str:
    """``Path(path).stem`` without building a Path (called once per record)."""
    return os.path.splitext(os.path.basename(path))[0]


def _stem(value: str) -> str:
    return Path(value).stem if value.lower().endswith(IMAGE_EXTENSIONS) else value


def read_attribution(path: Path) -> dict[str, tuple[int, Attribution]]:
    """stem -> (line, row) of an attribution CSV; raises :class:`AttributionError` naming the
    file and line for missing columns, empty or repeated ids and unreadable licences."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise AttributionError(f"{path}: cannot read the attribution file ({exc}); give a UTF-8 CSV "
                               "with the columns id,url,license,author,source") from None
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if header is None:
        raise AttributionError(f"{path}: the attribution file is empty; it needs the header "
                               f"{','.join(COLUMNS)} and one row per image")
    names = [_COLUMN_ALIASES.get(h.strip().lower(), h.strip().lower()) for h in header]
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise AttributionError(f"{path}: line 1 lacks the column(s) {', '.join(missing)} (it has "
                               f"{', '.join(h for h in names if h) or 'none'}); an attribution file has the columns "
                               f"{','.join(COLUMNS)}, as `bg20k build` writes them")
    col = {c: names.index(c) for c in COLUMNS if c in names}
    out: dict[str, tuple[int, Attribution]] = {}
    for line, row in enumerate(reader, start=2):
        if not any(v.strip() for v in row):
            continue
        row = row + [""] * (len(names) - len(row))
        get = {c: row[i].strip() for c, i in col.items()}
        if not get["id"]:
            raise AttributionError(f"{path}: line {line} has no id; give the image's file stem (or name)")
        lic = get["license"]
        if lic.lower() in NO_LICENCE:
            lic = ""
        elif not _READABLE.match(normalise_license(lic)):
            raise AttributionError(f"{path}: line {line} (id {get['id']}): licence {get['license']!r} cannot be read; "
                                   "write a name such as cc-by-4.0, cc0 or 'CC BY-SA 4.0', a creativecommons.org "
                                   "licence URL, or leave it empty for an unknown licence")
        key = _stem(get["id"])
        if key in out:
            raise AttributionError(f"{path}: line {line} repeats id {key} of line {out[key][0]}; keep one row per image")
        out[key] = (line, Attribution(key, get.get("url", ""), lic, get["author"], get["source"]))
    return out


def default_attribution(folder: Path) -> Path | None:
    """The ATTRIBUTION.csv `bg20k build` wrote for ``folder``: inside it, or beside it
    (``bg20k/train`` -> ``bg20k/ATTRIBUTION.csv``)."""
    for p in (folder / ATTRIBUTION_NAME, folder.parent / ATTRIBUTION_NAME):
        if p.is_file():
            return p
    return None


def _check_ids(path: Path, rows: dict[str, tuple[int, Attribution]], known: set[str], what: str,
               folder: Path, found: bool) -> None:
    """Every row names an input image, or an image of a sibling folder of the file (bg20k's
    ``testval/`` beside ``train/``); otherwise the file is not the folder's."""
    unknown = [k for k in rows if k not in known]
    if unknown:
        for sub in sorted(p for p in path.parent.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if sub.resolve() != folder.resolve():
                known = known | {p.stem for p in list_images(sub)}
        unknown = [k for k in unknown if k not in known]
    if unknown:
        line, att = min(rows[k] for k in unknown)
        hint = (f" (found beside {folder}; name the right file with --{what}-attribution)" if found
                else "; give the attribution file of this folder")
        raise AttributionError(f"{path}: line {line}: id {att.id} matches no image in --{what} {folder}"
                               f"{' and ' + str(len(unknown) - 1) + ' more rows' if len(unknown) > 1 else ''}{hint}")


@dataclass
class Provenance:
    """The attribution of every input and the licence rule of a compose run."""

    bg: dict[str, Attribution]
    fg: dict[str, Attribution]
    bg_file: Path | None = None
    fg_file: Path | None = None
    require_license: bool = False
    licenses: tuple[str, ...] | None = None
    refused_fg: int = 0
    refused_bg: int = 0

    def of_bg(self, path: str) -> Attribution:
        stem = path_stem(path)
        return self.bg.get(stem) or Attribution(stem)

    def of_fg(self, stem: str) -> Attribution:
        return self.fg.get(stem) or Attribution(stem)

    def refusal(self, att: Attribution) -> str | None:
        """Why the licence rule refuses this input, or None."""
        return license_rejection(att.license or None, self.require_license, self.licenses)

    def allowed(self, items: list, backgrounds: list[str]) -> tuple[list, list[str]]:
        """The foreground items and background paths the licence rule lets through (counted)."""
        keep_items = [it for it in items if self.refusal(self.of_fg(it.stem)) is None]
        keep_bgs = [b for b in backgrounds if self.refusal(self.of_bg(b)) is None]
        self.refused_fg, self.refused_bg = len(items) - len(keep_items), len(backgrounds) - len(keep_bgs)
        rule = self.rule_text()
        if items and not keep_items:
            raise LicenceRuleError(f"no foreground passes the licence rule ({rule}): all {len(items)} were refused; "
                                   "give their licences with --fg-attribution FILE or relax the rule")
        if backgrounds and not keep_bgs:
            where = self.bg_file or "no attribution file (pass --bg-attribution FILE)"
            raise LicenceRuleError(f"no background passes the licence rule ({rule}): all {len(backgrounds)} were "
                                   f"refused; attribution from {where}")
        return keep_items, keep_bgs

    def rule_text(self) -> str:
        parts = []
        if self.licenses:
            parts.append(f"--licenses {','.join(self.licenses)}")
        if self.require_license:
            parts.append("--require-license")
        return " ".join(parts) or "none"

    def annotate(self, rec: dict[str, Any]) -> dict[str, Any]:
        """A composite record with its foreground's and background's attribution."""
        return {**rec, "fg": {**rec["fg"], "attribution": self.of_fg(rec["fg"]["stem"]).record()},
                "bg": {**rec["bg"], "attribution": self.of_bg(rec["bg"]["path"]).record()}}

    def refused_record(self, rec: dict[str, Any]) -> bool:
        """A recorded composite whose foreground or background the rule now refuses."""
        return (self.refusal(self.of_fg(rec["fg"]["stem"])) is not None
                or self.refusal(self.of_bg(rec["bg"]["path"])) is not None)


def load_provenance(fg_dir: Path, bg_dir: Path, fg_file: Path | None, bg_file: Path | None,
                    require_license: bool = False, licenses: tuple[str, ...] | None = None) -> Provenance:
    """Read and check the attribution files (``bg_file`` None: the one `bg20k build` wrote, when found)."""
    found = False
    if bg_file is None:
        bg_file = default_attribution(bg_dir)
        found = bg_file is not None
    bg: dict[str, Attribution] = {}
    if bg_file is not None:
        rows = read_attribution(bg_file)
        _check_ids(bg_file, rows, {p.stem for p in list_images(bg_dir)}, "bg", bg_dir, found)
        bg = {k: a for k, (_, a) in rows.items()}
    fg: dict[str, Attribution] = {}
    if fg_file is not None:
        rows = read_attribution(fg_file)
        _check_ids(fg_file, rows, {p.stem for p in list_images(fg_dir)}, "fg", fg_dir, False)
        fg = {k: a for k, (_, a) in rows.items()}
    return Provenance(bg, fg, bg_file, fg_file, require_license, licenses)


def for_config(cfg) -> Provenance:
    """The provenance of a :class:`rssn.compose.ComposeConfig`'s inputs."""
    return load_provenance(cfg.fg_dir, cfg.bg_dir, cfg.fg_attribution, cfg.bg_attribution, cfg.require_license,
                           cfg.licenses)


def withdraw_refused(manifest, out_dir: Path, prov: Provenance) -> int:
    """Remove the composites (records and files) whose inputs the licence rule now refuses:
    a background's slot is made again over an allowed background, a foreground's is not."""
    gone = [r for r in manifest if r.get("type") == "composite" and prov.refused_record(r)]
    for rec in gone:
        for rel in rec["outputs"].values():
            (out_dir / rel).unlink(missing_ok=True)
    manifest.discard_many(r["key"] for r in gone)
    return len(gone)


def refresh(manifest, prov: Provenance) -> int:
    """Bring every composite record's attribution up to date (an attribution file may have
    changed since the composite was made; a set made before attribution existed has none), in
    memory: the caller's ``manifest.compact()`` writes them all at once. Returns the number changed."""
    changed = 0
    for rec in list(manifest):
        if rec.get("type") == "composite":
            new = prov.annotate(rec)
            if new != rec:
                manifest.replace(new)
                changed += 1
    return changed


ATTRIBUTION_COLUMNS = ("composite_id", *(f"{side}_{c}" for side in ("bg", "fg") for c in COLUMNS))


def write_composite_attribution(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """OUT/ATTRIBUTION.csv: one row per composite, its background's and foreground's attribution."""
    import io

    from .imageio import atomic_write_bytes

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(ATTRIBUTION_COLUMNS)
    n = 0
    for rec in sorted((r for r in records if r.get("type") == "composite"), key=lambda r: r["id"]):
        bg, fg = rec["bg"].get("attribution", {}), rec["fg"].get("attribution", {})
        w.writerow([rec["id"], *(bg.get(c, "") for c in COLUMNS), *(fg.get(c, "") for c in COLUMNS)])
        n += 1
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
    return n
