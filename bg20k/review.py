"""review.html: a contact sheet of kept and rejected images, with the reason and the
detection boxes drawn, for the manual double-check the paper did."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rssn.imageio import atomic_write_bytes, encode_image, read_image

THUMB_WIDTH = 320


def draw_thumbnail(image: np.ndarray, detections: list[list], width: int = THUMB_WIDTH) -> np.ndarray:
    """A thumbnail with every stored detection drawn as a labelled box."""
    h, w = image.shape[:2]
    th = max(1, round(h * width / w))
    t = cv2.resize(image, (width, th), interpolation=cv2.INTER_AREA)
    for name, conf, x1, y1, x2, y2 in detections:
        p1 = (int(x1 * width), int(y1 * th))
        p2 = (int(x2 * width), int(y2 * th))
        cv2.rectangle(t, p1, p2, (255, 40, 40), 2)
        cv2.putText(t, f"{name} {conf:.2f}", (p1[0] + 2, max(12, p1[1] + 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (255, 255, 0), 1, cv2.LINE_AA)
    return t


def write_review(out: Path, verdicts: list[dict[str, Any]], failed: list[dict[str, Any]]) -> None:
    thumbs = out / "review"
    thumbs.mkdir(exist_ok=True)
    cards = {"kept": [], "rejected": []}
    for v in verdicts:
        tp = thumbs / f"{v['id']}.jpg"
        if not tp.exists():
            src = out / ".stage" / f"{v['id']}.jpg"
            if src.exists():
                atomic_write_bytes(tp, encode_image(draw_thumbnail(read_image(src), v["detections"]), ".jpg",
                                                    jpeg_quality=85))
        cards[v["verdict"]].append(
            f'<figure class="card {v["verdict"]}" data-id="{html.escape(v["id"])}" data-verdict="{v["verdict"]}">'
            f'<img src="review/{html.escape(v["id"])}.jpg" alt="{html.escape(v["id"])}" loading="lazy">'
            f'<figcaption><b>{html.escape(v["id"])}</b> <span class="split">{v["split"]}</span><br>'
            f'<span class="reason">{html.escape(v["reason"])}</span><br>'
            f'<small>{html.escape(str(v["source"]))}</small></figcaption></figure>')
    rows = "".join(f'<tr class="failed"><td>{html.escape(str(r["source"]))}</td><td>{html.escape(r.get("stage", ""))}</td>'
                   f'<td>{html.escape(r.get("reason", ""))}</td></tr>' for r in failed)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>bg20k review</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; background: #fafafa; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 10px; }}
.card {{ width: {THUMB_WIDTH}px; margin: 0; background: #fff; border: 3px solid #ccc; }}
.card.kept {{ border-color: #2a2; }} .card.rejected {{ border-color: #c22; }}
.card img {{ width: 100%; display: block; }} figcaption {{ padding: 4px; font-size: 12px; word-break: break-all; }}
td {{ padding: 2px 8px; font-size: 13px; }}
</style></head><body>
<h1>bg20k review</h1>
<p>{len(cards['kept'])} kept, {len(cards['rejected'])} rejected, {len(failed)} sources failed or too small.
To override a verdict, write a CSV of <code>id,keep</code> or <code>id,reject</code> lines and pass it with
<code>--decisions FILE</code> on the next run.</p>
<h2 id="kept">Kept ({len(cards['kept'])})</h2><div class="grid">{''.join(cards['kept'])}</div>
<h2 id="rejected">Rejected ({len(cards['rejected'])})</h2><div class="grid">{''.join(cards['rejected'])}</div>
<h2 id="failed">Failed or too small ({len(failed)})</h2>
<table><tr><th>source</th><th>stage</th><th>reason</th></tr>{rows}</table>
</body></html>
"""
    atomic_write_bytes(out / "review.html", page.encode("utf-8"))
