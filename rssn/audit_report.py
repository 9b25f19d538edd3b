"""The outputs of `rssn audit`: audit.csv, audit.json, summary.json, hist/*.png, thumbs/ and
report.html (self-contained, relative links, works from file:// with no network).

Everything but summary.json (timings) depends only on the inputs and settings: the same
audit gives the same bytes.
"""
from __future__ import annotations

import csv
import html
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .imageio import atomic_write_bytes, atomic_write_json, encode_image

if TYPE_CHECKING:
    import numpy as np

    from .audit import AuditConfig, AuditItem, AuditResult

THUMB_WIDTH = 220
EXTRA_COLUMNS = ("fg_px", "bg_px", "pixels", "format", "jpeg_quality", "res_tile")

MEANING = {
    "noise_fg": "noise std of the foreground, 0-255", "noise_bg": "noise std of the background, 0-255",
    "noise_gap": "log2(noise bg / noise fg)",
    "sharp_fg": "sharpness of the foreground", "sharp_bg": "sharpness of the background",
    "sharp_gap": "log2(sharpness bg / fg)",
    "res_fg": "effective resolution of the foreground (fraction of Nyquist)",
    "res_bg": "effective resolution of the background (fraction of Nyquist)", "res_gap": "log2(resolution bg / fg)",
    "lum_gap": "lightness L* bg - fg", "sat_gap": "saturation bg - fg", "temp_gap": "colour temperature bg - fg (mired)",
    "contrast_gap": "log2(local contrast bg / fg)", "sem_bg": "salient objects detected in the background",
}


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return str(v)


def write_outputs(cfg: AuditConfig, result: AuditResult, by_key: dict[str, AuditItem]) -> None:
    out = cfg.out_dir
    order = {s.name: i for i, s in enumerate(result.sets)}
    rows = sorted(result.rows, key=lambda r: (order[r["set"]], r["name"]))
    header = ["set", "name", "status", "reason", *result.columns, *EXTRA_COLUMNS]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([_fmt(r.get(c)) for c in header])
    atomic_write_bytes(out / "audit.csv", buf.getvalue().encode())

    from .audit import farthest, gap_columns, settings_doc

    gaps = gap_columns(result.columns)
    far = farthest(rows, result.measures, result.reference, gaps, cfg.far)
    failures = [{"set": s.name, "path": f["path"], "reason": f["reason"]} for s in result.sets for f in s.failures]
    failures += [{"set": r["set"], "name": r["name"], "status": r["status"], "reason": r["reason"]}
                 for r in rows if r.get("status") != "ok"]
    sets_doc = {}
    for s in result.sets:
        mine = [r for r in rows if r["set"] == s.name]
        sets_doc[s.name] = {"root": s.root, "kind": s.kind, "images": len(s.items), "formats": formats(mine),
                            "ok": sum(r.get("status") == "ok" for r in mine),
                            "too_small": sum(r.get("status") == "too_small" for r in mine),
                            "failed": sum(r.get("status") == "failed" for r in mine), "input_failures": len(s.failures)}
    doc = {"reference": result.reference, "sets": sets_doc, "measures": result.measures, "farthest": far,
           "failures": failures, "meaning": {c: MEANING[c] for c in result.columns}, "settings": settings_doc(cfg)}
    atomic_write_json(out / "audit.json", doc, indent=1, sort_keys=True)
    seconds = [r["seconds"] for r in result.rows if r.get("seconds") is not None]
    mpix = sum(r.get("pixels") or 0 for r in result.rows if r.get("seconds") is not None) / 1e6
    summary = {"seconds": round(result.seconds, 3), "measured_now": result.measured_now, "reused": result.reused,
               "measure_seconds_per_image": round(sum(seconds) / len(seconds), 4) if seconds else None,
               "measure_seconds_per_1080p_image": round(sum(seconds) / mpix * 1920 * 1080 / 1e6, 4) if mpix else None,
               "workers": cfg.workers}
    atomic_write_json(out / "summary.json", summary)

    hists = write_histograms(out / "hist", rows, [s.name for s in result.sets], result.reference, result.columns)
    thumbs = write_thumbnails(out / "thumbs", far, by_key)
    write_html(out / "report.html", result, far, hists, thumbs, by_key, sets_doc)


def formats(rows: list[dict]) -> dict[str, int]:
    """How many measured images of each file format ("jpeg q95", "png", ...)."""
    out: dict[str, int] = {}
    for r in rows:
        if r.get("status") != "ok" or not r.get("format"):
            continue
        key = r["format"] + (f" q{r['jpeg_quality']}" if r.get("jpeg_quality") is not None else "")
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def _formats_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items()) or "–"


def hist_range(values: np.ndarray) -> tuple[float, float]:
    """The histogram's range: the 1st to 99th percentile of all sets' values together, so one
    far image (a JPEG-flattened background) does not squeeze every other into a few bins; values
    outside are drawn in the edge bins."""
    import numpy as np

    lo, hi = (float(x) for x in np.percentile(values, [1, 99]))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def write_histograms(folder: Path, rows: list[dict], set_names: list[str], reference: str,
                     columns: tuple[str, ...]) -> dict[str, str]:
    """One PNG per measure, the sets' distributions overlaid on shared bins; returns relative paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .audit import _finite

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for col in columns:
        data = {s: _finite([r for r in rows if r["set"] == s], col) for s in set_names}
        allv = np.concatenate([v for v in data.values() if len(v)] or [np.zeros(0)])
        if len(allv) == 0:
            continue
        lo, hi = hist_range(allv)
        bins = np.linspace(lo, hi, 25).tolist()  # the same edges, as matplotlib's types ask
        outside = int(np.sum((allv < lo) | (allv > hi)))
        fig, ax = plt.subplots(figsize=(4.2, 2.6), dpi=100)
        for s in set_names:
            if len(data[s]):
                ax.hist(np.clip(data[s], lo, hi), bins=bins, density=True, histtype="step",
                        linewidth=2.2 if s == reference else 1.4, label=f"{s} (reference)" if s == reference else s)
        ax.set_title(col, fontsize=10)
        note = f"; {outside} outside the 1st-99th percentiles, in the edge bins" if outside else ""
        ax.set_xlabel(MEANING[col] + note, fontsize=7 if note else 8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, frameon=False)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
        plt.close(fig)
        atomic_write_bytes(folder / f"{col}.png", buf.getvalue())
        paths[col] = f"hist/{col}.png"
    return paths


def write_thumbnails(folder: Path, far: dict[str, list[dict]], by_key: dict[str, AuditItem]) -> dict[str, str]:
    import cv2

    from .audit import read_pair

    done: dict[str, str] = {}
    for entries in far.values():
        for e in entries:
            key = f"{e['set']}/{e['name']}"
            if key in done:
                continue
            rel = f"thumbs/{e['set']}/{e['name']}.jpg"
            try:
                image, _ = read_pair(by_key[key])
            except Exception:
                continue
            h, w = image.shape[:2]
            t = cv2.resize(image, (THUMB_WIDTH, max(1, round(h * THUMB_WIDTH / w))), interpolation=cv2.INTER_AREA)
            (folder / e["set"]).mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(folder.parent / rel, encode_image(t, ".jpg", jpeg_quality=85))
            done[key] = rel
    return done


def describe_ops(ops: tuple) -> str:
    """The composite's operations in one line: 'bm3d bg sigma=0.74 · box_blur bg k=60 · ...'."""
    parts = []
    for o in ops:
        d = json.loads(o)
        name = d.pop("op")
        if name in ("blend",):
            continue
        d.pop("seed", None)
        d.pop("clip", None)
        target = d.pop("target", "")
        args = " ".join(f"{k}={v}" for k, v in sorted(d.items()))
        parts.append(" ".join(x for x in (name, target, args) if x))
    return " · ".join(parts) or "blend only"


def write_html(path: Path, result: AuditResult, far: dict[str, list[dict]], hists: dict[str, str],
               thumbs: dict[str, str], by_key: dict[str, AuditItem], sets_doc: dict[str, dict]) -> None:
    e = html.escape
    from .audit import BOOTSTRAP, CI_PERCENT, gap_columns

    gaps = gap_columns(result.columns)
    names = [s.name for s in result.sets]
    rows_by_key = {f"{r['set']}/{r['name']}": r for r in result.rows}
    ref = result.reference

    from .audit import MIN_IMAGES, clearly_closest
    from .measures import res_lower_limit

    closest = {c: clearly_closest(result.measures[c], ref) for c in gaps}

    def cell(col: str, s: str) -> str:
        m = result.measures[col][s]
        warn = (f' <span class="few" title="fewer than {MIN_IMAGES} images in this set or the reference: the '
                f'distance is mostly sampling noise">&#9888;</span>') if m.get("few") else ""
        count = f'<br><small class="n">n={m["n"]}</small>'
        if s == ref:
            return f'<td class="ref">reference{count}{warn}</td>'
        if m["w1"] is None:
            return f"<td>–{count}</td>"
        best = ' class="best"' if closest[col] == s else ""
        ci = (f' <small class="ci">[{m["w1_lo"]:.3g}, {m["w1_hi"]:.3g}]</small>' if m.get("w1_lo") is not None
              else "")
        return f"<td{best}>{m['w1']:.3g}{ci}{count}{warn}</td>"

    few = any(result.measures[c][s].get("few") for c in gaps for s in names)
    few_note = (f'<p class="warning">&#9888; A set or the reference has fewer than {MIN_IMAGES} images in a '
                f'column: two samples this small of one distribution already differ by a W1 of about a third of '
                f'its standard deviation, so read those distances through their intervals.</p>' if few else "")
    tiles = sorted({int(r["res_tile"]) for r in result.rows if r.get("status") == "ok" and r.get("res_tile")})
    limits = ", ".join(f"{res_lower_limit(t):.3f} with {t} px tiles" for t in tiles) or "–"

    dist = "".join(f"<tr><th>{e(s)}</th><td>{sets_doc[s]['ok']}</td><td class=\"fmt\">"
                   f"{e(_formats_text(sets_doc[s]['formats']))}</td>" + "".join(cell(c, s) for c in gaps) + "</tr>"
                   for s in names)
    medians = "".join(
        f"<tr><th>{e(s)}</th>" + "".join(
            (f"<td>{result.measures[c][s]['median']:.3g} <small>[{result.measures[c][s]['q1']:.3g}, "
             f"{result.measures[c][s]['q3']:.3g}]</small></td>") if result.measures[c][s]["median"] is not None
            else "<td>–</td>" for c in result.columns) + "</tr>" for s in names)
    figs = "".join(f'<figure class="hist"><img src="{e(quote(p))}" alt="histogram of {e(c)}"><figcaption>{e(c)}: '
                   f'{e(MEANING[c])}</figcaption></figure>' for c, p in hists.items())
    far_html = []
    for col in gaps:
        ref_med = result.measures[col][ref]["median"]
        cards = []
        for f in far.get(col, []):
            key = f"{f['set']}/{f['name']}"
            item = by_key[key]
            img = f'<img src="{e(quote(thumbs[key]))}" alt="{e(key)}">' if key in thumbs else ""
            ops = describe_ops(item.ops) if item.ops else "a photo (no operations)"
            row = rows_by_key.get(key, {})
            fmt = (row.get("format") or "") + (f" q{row['jpeg_quality']}" if row.get("jpeg_quality") is not None else "")
            cards.append(f'<figure class="card">{img}<figcaption><b>{e(key)}</b><br>{e(col)} = {f["value"]:.3g} '
                         f'(reference median {ref_med:.3g})<br><span class="ops">{e(ops)}</span><br>'
                         f'<span class="fmt">{e(fmt)}</span><br>'
                         f'<small>{e(item.source)}</small></figcaption></figure>')
        if cards:
            far_html.append(f'<h3>{e(col)}</h3><div class="grid">{"".join(cards)}</div>')
    fails = [(r["set"], r["name"], r["status"], r.get("reason", "")) for r in result.rows if r.get("status") != "ok"]
    fails += [(s.name, f["path"], "input", f["reason"]) for s in result.sets for f in s.failures]
    fail_rows = "".join(f"<tr><td>{e(a)}</td><td>{e(b)}</td><td>{e(c)}</td><td>{e(d)}</td></tr>" for a, b, c, d in fails)
    head = "".join(f'<th title="{e(MEANING[c])}">{e(c)}</th>' for c in gaps)
    mhead = "".join(f'<th title="{e(MEANING[c])}">{e(c)}</th>' for c in result.columns)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rssn audit</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; background: #fafafa; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; font-size: 13px; text-align: right; }}
th {{ background: #eee; }} .warning {{ color: #a40; }} .few {{ color: #a40; }} td.ref {{ color: #777; font-style: italic; }} td.best {{ font-weight: bold; background: #dfd; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 10px; }}
.card {{ width: {THUMB_WIDTH}px; margin: 0; background: #fff; border: 1px solid #ccc; }}
.card img {{ width: 100%; display: block; }} figcaption {{ padding: 4px; font-size: 12px; word-break: break-word; }}
.hist {{ display: inline-block; margin: 4px; background: #fff; border: 1px solid #ddd; }}
.ops {{ color: #246; }}
</style></head><body>
<h1>rssn audit</h1>
<p>Reference: <b>{e(ref)}</b>. Each image's foreground (alpha &ge; 0.99) and background (alpha &le; 0.01), eroded
away from the boundary, are measured; a <i>gap</i> compares the background with the foreground. A set whose gaps are
distributed like the reference's is closer to real photos.</p>
<h2 id="distance">Distance to the reference</h2>
<p>Wasserstein-1 distance between the set's per-image gaps and the reference's (lower is closer to real), with
its {CI_PERCENT} % bootstrap interval ({BOOTSTRAP} resamples of both sets, seeded; a percentile interval of a
distance leans upwards with few images, where the distance itself can sit at its lower end) and <i>n</i>, the
images with
a value in that column (an image can lack one measure, e.g. a resolution where no tile fits, so columns can cover
different images). A set is in bold only where its interval lies wholly below every other set's.
Resolution is measured with one tile size per image for both regions (res_tile in audit.csv) and cannot read
below {e(limits)}.</p>
{few_note}
<table id="distance-table"><tr><th>set</th><th>images</th><th>formats</th>{head}</tr>{dist}</table>
<h2 id="medians">Medians [quartiles]</h2>
<table id="median-table"><tr><th>set</th>{mhead}</tr>{medians}</table>
<h2 id="histograms">Histograms</h2>
<div>{figs}</div>
<h2 id="farthest">Farthest from the reference</h2>
<p>Per gap measure, the images of the other sets farthest from the reference's median, with the operations the
composite's manifest records.</p>
{''.join(far_html)}
<h2 id="failures">Not scored ({len(fails)})</h2>
<table><tr><th>set</th><th>image</th><th>status</th><th>reason</th></tr>{fail_rows}</table>
</body></html>
"""
    atomic_write_bytes(path, page.encode("utf-8"))
