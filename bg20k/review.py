"""review.html: a contact sheet of kept and rejected images, with the reason and the
detection boxes drawn, for the manual double-check the paper did."""
from __future__ import annotations

import html
import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rssn.imageio import atomic_write_bytes, atomic_write_chunks, encode_image, read_image

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


def reason_class(v: dict[str, Any]) -> str:
    """The filter group of a verdict: 'salient object: bird', 'near duplicate', ..., from its
    ``code`` (verdicts of runs before codes existed: from the reason's wording)."""
    code, r = v.get("code"), v["reason"]
    if code == "licence" or v.get("licence_rejected"):
        return "licence"
    if v.get("opt_out"):
        return "opt-out"
    if code in ("manual_keep", "manual_reject") or "automatic" in v:
        return "manual decision"
    if code == "salient_object":
        return "salient object: " + v.get("object", r.split(":", 1)[-1].split()[0])
    if code == "duplicate":
        return "near duplicate"
    if code is None and r.startswith("salient object:"):
        return "salient object: " + r.split(":", 1)[1].split()[0]
    if code is None and r.startswith("near duplicate"):
        return "near duplicate"
    return r


def _card(v: dict[str, Any]) -> str:
    e = html.escape
    a = v.get("attribution", {})
    credit = ""
    if a:
        src = a.get("source", "")
        link = f' <a href="{e(src)}" rel="noreferrer">page</a>' if src.startswith(("http://", "https://")) else ""
        credit = (f'<br><span class="licence">{e(a.get("license", "no licence"))}</span>'
                  f'{" · " + e(a["author"]) if a.get("author") else ""}{link}')
    automatic = v.get("automatic", v["verdict"])
    locked = bool(v.get("licence_rejected") or v.get("opt_out"))  # rules the page cannot override
    picture = ('<div class="noimage">not downloaded: the host opted out</div>' if v.get("opt_out") else
               f'<img src="review/{e(v["id"])}.jpg" alt="{e(v["id"])}" loading="lazy">')
    return (f'<figure class="card {v["verdict"]}" tabindex="-1" data-id="{e(v["id"])}" data-verdict="{v["verdict"]}" '
            f'data-built="{v["verdict"]}" data-automatic="{automatic}" data-manual="{int("automatic" in v)}" '
            f'data-locked="{int(locked)}" data-reason="{e(reason_class(v))}">{picture}'
            f'<figcaption><b>{e(v["id"])}</b> <span class="split">{v["split"]}</span> '
            f'<span class="badge"></span><br>'
            f'<span class="reason">{e(v["reason"])}</span><br>'
            f'<small>{e(str(v["source"]))}{credit}</small></figcaption></figure>')


# The page's behaviour: plain JavaScript, no network, works from file://.
SCRIPT = r"""
(function () {
  const cards = Array.from(document.querySelectorAll('.card'));
  let focus = -1;
  const visible = () => cards.filter(c => !c.hidden);
  function setVerdict(card, verdict) {
    if (card.dataset.locked === '1') { flash(card); return; }
    card.dataset.verdict = verdict;
    card.classList.toggle('kept', verdict === 'kept');
    card.classList.toggle('rejected', verdict === 'rejected');
    card.classList.toggle('changed', verdict !== card.dataset.built);
    card.querySelector('.badge').textContent = verdict !== card.dataset.built ? 'changed to ' + verdict : '';
    update();
  }
  function flash(card) { card.classList.add('locked-flash'); setTimeout(() => card.classList.remove('locked-flash'), 400); }
  function toggle(card) { setVerdict(card, card.dataset.verdict === 'kept' ? 'rejected' : 'kept'); }
  function setFocus(card) {
    cards.forEach(c => c.classList.remove('focus'));
    if (!card) { focus = -1; return; }
    focus = cards.indexOf(card);
    card.classList.add('focus');
    card.focus({preventScroll: true});
    card.scrollIntoView({block: 'nearest'});
  }
  // The decisions file: every image whose verdict is not the automatic one, or that had a
  // manual decision before, as "id,keep" / "id,reject" (the --decisions format).
  function decisions() {
    return cards.filter(c => c.dataset.locked !== '1' &&
                             (c.dataset.verdict !== c.dataset.automatic || c.dataset.manual === '1'))
                .map(c => c.dataset.id + ',' + (c.dataset.verdict === 'kept' ? 'keep' : 'reject'));
  }
  function update() {
    const v = document.getElementById('filter-verdict').value;
    const r = document.getElementById('filter-reason').value;
    let shown = 0;
    cards.forEach(c => {
      const ok = (v === 'all' || (v === 'changed' ? c.dataset.verdict !== c.dataset.built : c.dataset.verdict === v)) &&
                 (r === 'all' || c.dataset.reason === r);
      c.hidden = !ok;
      shown += ok;
    });
    const kept = cards.filter(c => c.dataset.verdict === 'kept').length;
    const changed = cards.filter(c => c.dataset.verdict !== c.dataset.built).length;
    document.getElementById('counts').textContent =
      kept + ' kept, ' + (cards.length - kept) + ' rejected, ' + changed + ' changed here, ' + shown + ' shown';
    document.getElementById('download').textContent = 'Download decisions.csv (' + decisions().length + ')';
  }
  cards.forEach(c => c.addEventListener('click', ev => {
    if (ev.target.closest('a')) return;
    setFocus(c); toggle(c);
  }));
  document.getElementById('filter-verdict').addEventListener('change', update);
  document.getElementById('filter-reason').addEventListener('change', update);
  document.getElementById('download').addEventListener('click', () => {
    const text = 'id,decision\n' + decisions().map(l => l + '\n').join('');
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([text], {type: 'text/csv'}));
    a.download = 'decisions.csv';
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  });
  document.addEventListener('keydown', ev => {
    if (ev.target.tagName === 'SELECT' || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const vis = visible();
    if (!vis.length) return;
    const at = vis.indexOf(cards[focus]);
    if (['ArrowRight', 'ArrowDown', 'ArrowLeft', 'ArrowUp'].includes(ev.key)) {
      const step = ev.key === 'ArrowRight' || ev.key === 'ArrowDown' ? 1 : -1;
      setFocus(vis[at < 0 ? 0 : Math.min(vis.length - 1, Math.max(0, at + step))]);
      ev.preventDefault();
    } else if ((ev.key === 'k' || ev.key === 'r') && at >= 0) {
      setVerdict(vis[at], ev.key === 'k' ? 'kept' : 'rejected');
    } else if (ev.key === ' ' && at >= 0) {
      toggle(vis[at]); ev.preventDefault();
    }
  });
  update();
})();
"""


def write_review(out: Path, verdicts: list[dict[str, Any]], failed: Iterable[dict[str, Any]],
                 n_failed: int | None = None) -> None:
    """OUT/review.html: every candidate as a card one can click to change its verdict, with
    filters and a button that downloads the changes as a --decisions file.

    ``failed``: the rows of the failed sources (source, stage, reason), a list or, with
    ``n_failed``, an iterable read once: the page is written as it is made, so a crawl's tens of
    thousands of rows are never all in memory (issue #28)."""
    if n_failed is None:
        failed = list(failed)
        n_failed = len(failed)
    thumbs = out / "review"
    thumbs.mkdir(exist_ok=True)
    for v in verdicts:
        tp = thumbs / f"{v['id']}.jpg"
        if not tp.exists():
            src = out / ".stage" / f"{v['id']}.jpg"
            if src.exists():
                atomic_write_bytes(tp, encode_image(draw_thumbnail(read_image(src), v["detections"]), ".jpg",
                                                    jpeg_quality=85))
    ordered = sorted(verdicts, key=lambda v: (v["verdict"] != "kept", v["id"]))
    cards = "".join(_card(v) for v in ordered)
    e = html.escape
    reasons = sorted({reason_class(v) for v in verdicts})
    reason_opts = "".join(f'<option value="{e(r)}">{e(r)}</option>' for r in reasons)
    n_kept = sum(v["verdict"] == "kept" for v in verdicts)
    rows = (f'<tr class="failed"><td>{e(str(r["source"]))}</td><td>{e(r.get("stage", ""))}</td>'
            f'<td>{e(r.get("reason", ""))}</td></tr>'.encode() for r in failed)
    head = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>bg20k review</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; background: #fafafa; }}
.bar {{ position: sticky; top: 0; background: #fafafa; padding: 6px 0; z-index: 2; border-bottom: 1px solid #ddd; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 10px; margin-top: 10px; }}
.card {{ width: {THUMB_WIDTH}px; margin: 0; background: #fff; border: 4px solid #ccc; cursor: pointer; outline: none; }}
.card.kept {{ border-color: #2a2; }} .card.rejected {{ border-color: #c22; opacity: 0.8; }}
.card.changed {{ box-shadow: 0 0 0 3px #f90; }} .card.focus {{ outline: 3px dashed #06c; outline-offset: 2px; }}
.card.locked-flash {{ background: #fdd; }}
.badge {{ color: #c60; font-weight: bold; }} .licence {{ color: #246; }}
.card img {{ width: 100%; display: block; }}
.noimage {{ height: 120px; display: flex; align-items: center; justify-content: center; background: #eee; color: #666; }}
figcaption {{ padding: 4px; font-size: 12px; word-break: break-all; }}
td {{ padding: 2px 8px; font-size: 13px; }}
</style></head><body>
<h1>bg20k review</h1>
<p>{n_kept} kept, {len(verdicts) - n_kept} rejected, {n_failed} sources failed, too small or barred by the licence
rule. Click a card to change its verdict (or move with the arrow keys, then <kbd>k</kbd> keep, <kbd>r</kbd> reject,
space toggles). Then download <code>decisions.csv</code> and run the same <code>bg20k build</code> command with
<code>--decisions decisions.csv</code>: the images move. Licence rejections and sources whose host opted out
(<code>X-Robots-Tag</code>) cannot be overridden here.</p>
<div class="bar">
<label>verdict <select id="filter-verdict"><option value="all">all</option><option value="kept">kept</option>
<option value="rejected">rejected</option><option value="changed">changed here</option></select></label>
<label>reason <select id="filter-reason"><option value="all">all</option>{reason_opts}</select></label>
<button id="download" type="button">Download decisions.csv</button>
<span id="counts"></span>
</div>
<div class="grid" id="cards">{cards}</div>
<h2 id="failed">Failed, too small or barred by the licence rule ({n_failed})</h2>
<table><tr><th>source</th><th>stage</th><th>reason</th></tr>"""
    tail = f"""</table>
<script>{SCRIPT}</script>
</body></html>
"""
    atomic_write_chunks(out / "review.html", itertools.chain([head.encode("utf-8")], rows, [tail.encode("utf-8")]))
