"""The dataset card of a composite set: OUT/DATASET.md for people, OUT/dataset.json for machines.

A datasheet that travels with the data (Gebru et al., "Datasheets for Datasets"; Hugging Face
dataset cards): what the set is, how it was made, where it came from, the terms that follow,
and its known limits. Every figure is computed from the manifest and the settings that decide
the bytes, so the same settings give the same card, byte for byte: no timings, no absolute
paths, no dates (summary.json and settings.json hold those).
"""
from __future__ import annotations

import platform
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bg20k.licenses import split_license

from .provenance import UNKNOWN, Provenance, licence_key, path_stem

CARD_NAME, FACTS_NAME = "DATASET.md", "dataset.json"
CARD_VERSION = 1

BM3D_TERMS = ("BM3D denoising ran while making this set. The `bm3d` package that computed it is "
              "distributed by Tampere University under a licence for non-commercial use only (research "
              "and evaluation): commercial use of this data, or of models trained on it, may need a licence "
              "from its authors. `rssn compose --denoise-p 0` makes a set without it.")
_PACKAGES = ("gfm-toolkit", "numpy", "opencv-python-headless", "opencv-python", "bm3d", "pymatting", "scipy")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _place(p: Path | None) -> str | None:
    """A folder or file by its last two path parts (``bg20k/train``): stable across machines."""
    if p is None:
        return None
    return Path(*Path(p).resolve().parts[-2:]).as_posix()


def licence_name(key: str) -> str:
    """'cc-by-sa-4.0' -> 'CC BY-SA 4.0'; 'cc0-1.0' -> 'CC0 1.0'; 'pdm' -> 'Public Domain Mark'."""
    if key == UNKNOWN:
        return "unknown licence"
    fam, version = split_license(key)
    if fam == "pdm":
        name = "Public Domain Mark"
    elif fam == "cc0":
        name = "CC0"
    elif fam.startswith("cc-"):
        name = "CC " + fam[3:].upper()
    else:
        name = fam
    return f"{name} {version}" if version else name


def licence_terms(key: str) -> str:
    """What a licence asks of whoever shares composites made from such an input."""
    if key == UNKNOWN:
        return "no licence on record: clear the rights before sharing the composites made from them"
    fam, _ = split_license(key)
    if fam in ("cc0", "pdm"):
        return "public domain: no conditions"
    if not fam.startswith("cc-by"):
        return f"the terms of {licence_name(key)}: read the licence"
    terms = ["attribution required, see ATTRIBUTION.csv"]
    if "-nc" in fam:
        terms.append("non-commercial use only")
    if "-sa" in fam:
        terms.append("share-alike: composites made from them are shared under the same licence")
    if "-nd" in fam:
        terms.append("no derivatives: composites are adaptations and may not be shared")
    return "; ".join(terms)


def _licence_table(records: list[dict[str, Any]], side: str) -> list[dict[str, Any]]:
    images: dict[str, set[str]] = {}
    composites: Counter = Counter()
    for r in records:
        key = licence_key(_licence_of(r[side]))
        images.setdefault(key, set()).add(r[side].get("attribution", {}).get("id") or _input_id(r, side))
        composites[key] += 1
    return [{"licence": k, "name": licence_name(k), "images": len(images[k]), "composites": composites[k],
             "terms": licence_terms(k)} for k in sorted(images, key=lambda k: (-len(images[k]), k))]


def _licence_of(part: dict[str, Any]) -> str:
    lic = part.get("attribution", {}).get("license", "")
    return "" if lic == UNKNOWN else lic


def _input_id(rec: dict[str, Any], side: str) -> str:
    return rec["fg"]["stem"] if side == "fg" else path_stem(rec["bg"]["path"])


def dataset_facts(cfg, records: Iterable[dict[str, Any]], prov: Provenance) -> dict[str, Any]:
    """Every fact of the card, from the manifest records, the byte settings and the provenance."""
    from .compose import PROVENANCE_SETTINGS, byte_settings

    recs = sorted((r for r in records), key=lambda r: r.get("key", ""))
    comps = [r for r in recs if r.get("type") == "composite"]
    failures = [r for r in recs if r.get("type") == "failure"]
    n = len(comps)
    sizes = Counter(tuple(r["fg"]["size"]) for r in comps)
    smallest = min(sizes, key=lambda s: (s[0] * s[1], s)) if sizes else None  # by area, then (w, h)
    largest = max(sizes, key=lambda s: (s[0] * s[1], s)) if sizes else None
    ops: Counter = Counter()
    for r in comps:
        for op in r["ops"]:
            name = op["op"]
            if name == "foreground":
                ops[f"foreground colours: {op['method']}"] += 1
            elif name == "bm3d":
                ops[f"bm3d on the {'foreground' if op['target'] == 'fg' else 'background'}"] += 1
            elif name == "box_blur":
                ops["box blur of the background"] += 1
                ops[f"box blur of the background, kernel {op['kernel']}"] += 1
            elif name == "gaussian_noise":
                ops[f"gaussian noise, sigma {op['sigma']:g}"] += 1
            else:
                ops[name] += 1
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in byte_settings(cfg).items()
                if k not in ("fg_dir", "bg_dir", *PROVENANCE_SETTINGS)}
    fg_tab, bg_tab = _licence_table(comps, "fg"), _licence_table(comps, "bg")
    bm3d_runs = sum(1 for r in comps if any(o["op"] == "bm3d" for o in r["ops"]))
    terms = []
    if bm3d_runs:
        terms.append({"kind": "bm3d", "text": f"{BM3D_TERMS} ({bm3d_runs} of {n} composites went through BM3D.)"})
    for side, tab in (("backgrounds", bg_tab), ("foregrounds", fg_tab)):
        for row in tab:
            terms.append({"kind": "licence", "text": f"{row['images']} {side} {row['name']}: {row['terms']}"})
    terms.append({"kind": "derived", "text": "Each composite is made from one foreground and one background: "
                  "the terms of both apply to it together (ATTRIBUTION.csv names both for every composite)."})
    unknown_fg = next((r["images"] for r in fg_tab if r["licence"] == UNKNOWN), 0)
    unknown_bg = next((r["images"] for r in bg_tab if r["licence"] == UNKNOWN), 0)
    limits = [
        "Composites are synthetic: foregrounds blended over backgrounds they were not photographed with. "
        "The RSSN route narrows, but does not close, the gap to real photos.",
        "Foreground colours are estimated from the photo and its matte where the source gives no foreground "
        f"({cfg.fg_method}); they are not measured.",
        "Licences are recorded as the attribution files state them; they are not verified, and this card is not "
        "legal advice.",
        "Inputs are matched to attribution rows by file stem: images with the same stem in different sub-folders "
        "share a row.",
    ]
    if unknown_bg or unknown_fg:
        limits.append(f"{unknown_bg} backgrounds and {unknown_fg} foregrounds have no licence on record "
                      "(unknown licence).")
    failed_inputs = sum(1 for r in failures if r.get("scope") != "composite")
    failed_comps = sum(r.get("slots", 1) if r.get("scope") != "input" else 0 for r in failures)
    if failures:
        limits.append(f"{failed_inputs} inputs could not be used and {failed_comps} composites were not made; "
                      "manifest.jsonl gives each reason.")
    image_format = {"png": "PNG", "jpg": f"JPEG, quality {cfg.jpeg_quality}",
                    "webdataset": "PNG, also packed in shards/shard-NNNNNN.tar",
                    "store": "PNG, also packed in the training store store/ (gfm pack)"}[cfg.image_format]
    return {
        "card_version": CARD_VERSION,
        "what": {
            "composites": n,
            "foregrounds": len({r["fg"]["stem"] for r in comps}),
            "backgrounds": len({r["bg"]["path"] for r in comps}),
            "per_foreground": cfg.per_fg,
            "image_sizes": {"distinct": len(sizes),
                            "min": list(smallest) if smallest is not None else None,
                            "max": list(largest) if largest is not None else None,
                            "most_common": [[w, h, c] for (w, h), c in sorted(sizes.items(),
                                                                                key=lambda kv: (-kv[1], kv[0]))[:5]]},
            "formats": {"image": image_format, "alpha": "PNG, the input matte (values and bit depth unchanged)",
                        "fg": "PNG, 8-bit RGB", "bg": "PNG, 8-bit RGB"},
            "layout": _layout(cfg.image_format),
        },
        "how": {
            "command": "rssn compose",
            "route": cfg.route,
            "seed": cfg.seed,
            "settings": settings,
            "probabilities": {"denoise_p": cfg.probabilities.denoise_p, "blur_p": cfg.probabilities.blur_p,
                              "noise_p": cfg.probabilities.noise_p},
            "operations": {k: {"composites": v, "fraction": round(v / n, 4) if n else 0.0}
                           for k, v in sorted(ops.items())},
            "versions": _versions(),
        },
        "where": {
            "foregrounds": {"folder": _place(cfg.fg_dir), "layouts": dict(sorted(Counter(r["fg"]["kind"] for r in comps).items())),
                            "attribution_file": _place(prov.fg_file), "refused_by_licence_rule": prov.refused_fg,
                            "licences": fg_tab},
            "backgrounds": {"folder": _place(cfg.bg_dir), "attribution_file": _place(prov.bg_file),
                            "refused_by_licence_rule": prov.refused_bg, "licences": bg_tab},
            "licence_rule": prov.rule_text(),
        },
        "terms": terms,
        "limits": limits,
    }


def _layout(image_format: str) -> dict[str, str]:
    ext = "jpg" if image_format == "jpg" else "png"
    out = {f"image/ID.{ext}": "the composite I = aF + (1-a)B (after the route's operations)",
           "alpha/ID.png": "its matte a", "fg/ID.png": "the foreground F that was blended",
           "bg/ID.png": "the background B that was blended",
           "manifest.jsonl": "one record per composite: inputs, attribution, crop, every operation and its parameters",
           "ATTRIBUTION.csv": "one row per composite: its background's and foreground's id, url, licence, author, source"}
    if image_format == "webdataset":
        out["shards/shard-NNNNNN.tar"] = "every sample as ID.image.png, ID.alpha.png, ID.fg.png, ID.bg.png, ID.json"
    if image_format == "store":
        out["store/"] = "the training store `gfm train --data OUT/store` crops without decoding (gfm pack)"
    return out


def render_card(facts: dict[str, Any]) -> str:
    """DATASET.md from the facts."""
    w, h, where = facts["what"], facts["how"], facts["where"]
    sz = w["image_sizes"]
    lines = ["# Dataset card: composite matting set", "",
             f"Made by `rssn compose` (gfm-toolkit {h['versions'].get('gfm-toolkit', 'unknown')}). "
             "The same facts for machines: `dataset.json`.", "",
             "## What the set is", "",
             f"- {w['composites']} composites of {w['foregrounds']} foregrounds over {w['backgrounds']} backgrounds "
             f"(up to {w['per_foreground']} per foreground).",
             f"- Image sizes: {sz['distinct']} distinct, from {_wh(sz['min'])} to {_wh(sz['max'])}; most common: "
             + (", ".join(f"{a}x{b} ({c})" for a, b, c in sz["most_common"]) or "none") + ".",
             "- Formats: " + "; ".join(f"{k}: {v}" for k, v in w["formats"].items()) + ".",
             "", "Layout (ID is `<foreground stem>_<slot>`):", ""]
    lines += [f"- `{k}`: {v}" for k, v in w["layout"].items()]
    lines += ["", "## How it was made", "",
              f"- Route: `{h['route']}`; seed {h['seed']} (every random choice derives from it).",
              "- Probabilities: " + ", ".join(f"{k} {v:g}" for k, v in h["probabilities"].items()) + ".",
              "- Settings: " + ", ".join(f"{k}={_val(v)}" for k, v in sorted(h["settings"].items())) + ".",
              "", "Operations, from the manifest:", "", "| operation | composites | fraction |", "|---|---|---|"]
    lines += [f"| {k} | {v['composites']} | {v['fraction']:.4f} |" for k, v in h["operations"].items()]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in h["versions"].items()) + ".", "",
              "## Where it came from", ""]
    for side in ("foregrounds", "backgrounds"):
        s = where[side]
        att = f"attribution from `{s['attribution_file']}`" if s["attribution_file"] else "no attribution file"
        lines.append(f"- {side.capitalize()}: `{s['folder']}`; {att}; {s['refused_by_licence_rule']} refused by the "
                     f"licence rule.")
    lines += [f"- Licence rule at compose time: {where['licence_rule']}.", "", "Licences (images, composites):", ""]
    for side in ("backgrounds", "foregrounds"):
        for row in where[side]["licences"]:
            lines.append(f"- {row['images']} {side} {row['name']} ({row['composites']} composites): {row['terms']}")
    lines += ["", "## Terms that follow from how it was made", ""]
    lines += [f"- {t['text']}" for t in facts["terms"]]
    lines += ["", "## Known limits", ""]
    lines += [f"- {t}" for t in facts["limits"]]
    return "\n".join(lines) + "\n"


def _wh(s: list[int] | None) -> str:
    return f"{s[0]}x{s[1]}" if s else "none"


def _val(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(map(str, v))
    return str(v)


def write_card(cfg, records: Iterable[dict[str, Any]], prov: Provenance) -> dict[str, Any]:
    """Write OUT/dataset.json and OUT/DATASET.md (rewritten by every run, resumes included)."""
    from .imageio import atomic_write_bytes, atomic_write_json

    facts = dataset_facts(cfg, records, prov)
    atomic_write_json(cfg.out_dir / FACTS_NAME, facts, sort_keys=True)
    atomic_write_bytes(cfg.out_dir / CARD_NAME, render_card(facts).encode("utf-8"))
    return facts
