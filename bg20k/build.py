"""`bg20k build`: a BG-20k-style background set, as a pipeline of narrow stages.

load the detector (and check --classes)  ->  fetch (threads, a bounded window of URLs in
flight: URLs -> OUT/.downloads)  ->  prepare (processes: decode, resolution and transparency
filters, sRGB, resize, JPEG, perceptual hashes -> OUT/.stage/<id>.jpg)  ->  dedup (each image
against the groups' kept representatives)  ->  screen (YOLO, batches of one image shape,
detections cached in the manifest)  ->  decide (rule + decisions file)  ->  place (OUT/train,
OUT/testval)  ->  report (stats.json, review.html).

An image's id is a hash of its source bytes, so names never come from a URL. A placed image
is recorded (``placed:<id>``) and never moves between train and testval; a duplicate group
takes its split from its representative, so near copies share a split; an image kept before
stays its group's representative when a larger copy arrives. A re-run skips every source the
manifest already holds and reuses every finished download.
"""
from __future__ import annotations

import concurrent.futures as cf
import csv
import hashlib
import os
import shutil
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import numpy as np

from rssn.checks import check_choice_setting, check_int_setting, check_number_setting
from rssn.imageio import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    atomic_write_bytes,
    atomic_write_json,
    failure_code,
    list_images,
    remove_stale_temporaries,
)
from rssn.manifest import Manifest

from .dedup import assign_groups, hash_to_int
from .download import (
    ATTRIBUTION_FIELDS,
    DEFAULT_DISALLOWED_DIRECTIVES,
    FetchPolicy,
    HostSlots,
    fetch,
    read_url_records,
    user_agent,
)
from .licenses import license_rejection
from .screen import Detection, Detector, rejecting_detection

HASHES = ("phash", "dhash", "whash", "ahash")
DOWNLOADS_IN_FLIGHT_PER_WORKER = 4  # submitted but unfinished downloads, per download thread
DEDUP_BUCKET_CAP = 16  # entries compared per multi-index bucket (see dedup.assign_groups)


@dataclass(frozen=True)
class BuildConfig:
    out_dir: Path
    src_dirs: tuple[Path, ...] = ()
    url_files: tuple[Path, ...] = ()
    min_short_side: int = 1080
    target_short_side: int = 1080
    quality: int = 95
    hash: str = "phash"
    dedup_distance: int = 6
    screen: bool = True
    detector: str = "yolov8n.pt"
    classes: tuple[str, ...] | None = None
    conf: float = 0.25
    min_box_fraction: float = 0.05
    detect_batch: int = 8
    imgsz: int = 640
    val_fraction: float = 0.25
    decisions: Path | None = None
    workers: int = 1
    executor: str = "local"
    ray_address: str | None = None
    download_workers: int = 16
    timeout: float = 30.0
    max_bytes: int = 50_000_000
    max_redirects: int = 5
    retries: int = 2
    max_pixels: int = DEFAULT_MAX_PIXELS
    require_license: bool = False
    licenses: tuple[str, ...] | None = None
    chroma: str = "444"
    allow_private_networks: bool = False
    disallowed_header_directives: tuple[str, ...] = DEFAULT_DISALLOWED_DIRECTIVES
    user_agent_contact: str | None = None
    max_per_host: int = 2

    def __post_init__(self) -> None:
        """The ranges `bg20k build`'s options enforce, for Python callers too."""
        own = "BuildConfig"
        for key, lo, hi in (("min_short_side", 1, None), ("target_short_side", 1, None), ("quality", 1, 100),
                            ("dedup_distance", 0, 32), ("detect_batch", 1, None), ("imgsz", 32, None),
                            ("workers", 1, None), ("download_workers", 1, None), ("max_bytes", 1, None),
                            ("max_redirects", 0, None), ("retries", 0, None), ("max_pixels", 1, None),
                            ("max_per_host", 1, None)):
            check_int_setting(own, key, getattr(self, key), lo, hi)
        for key in ("conf", "min_box_fraction", "val_fraction"):
            check_number_setting(own, key, getattr(self, key), 0.0, 1.0)
        check_number_setting(own, "timeout", self.timeout, 0.0, lo_open=True)
        check_choice_setting(own, "hash", self.hash, HASHES)
        check_choice_setting(own, "chroma", self.chroma, ("444", "422", "420"))
        check_choice_setting(own, "executor", self.executor, ("local", "ray"))


# the crawl policy is re-applied on every run (see _done), so changing it never blocks a re-run
RUN_ONLY_SETTINGS = ("out_dir", "workers", "executor", "ray_address", "download_workers", "timeout", "max_bytes",
                     "max_redirects", "retries", "detect_batch", "allow_private_networks",
                     "disallowed_header_directives", "user_agent_contact", "max_per_host")
POLICY_STAGES = ("private_network", "opt_out")  # refusals by the crawl policy (manifest stages)


def byte_settings(cfg: BuildConfig) -> dict:
    """The settings that decide what the set holds (recorded in OUT/settings.json)."""
    return {k: v for k, v in asdict(cfg).items() if k not in RUN_ONLY_SETTINGS}


class Candidate(NamedTuple):
    """What dedup, screening and the verdicts need of a candidate's manifest record (the whole
    record stays in the manifest file: at crawl scale, holding every record dict costs kBs per URL)."""

    source: str
    hash: str
    hash_mirror: str | None
    orig_size: list[int]
    size: list[int]

    @classmethod
    def of(cls, rec: dict[str, Any]) -> Candidate:
        return cls(rec["source"], rec["hash"], rec.get("hash_mirror"), rec["orig_size"], rec["size"])


@dataclass
class Stats:
    counts: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)


# ------------------------------------------------------------------ prepare (one source)


def content_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def prepare_source(source: str, path: str, cfg: BuildConfig) -> dict[str, Any]:
    """Decode, filter by resolution, resize, write the staged JPEG and hash it."""

    from rssn.imageio import exif_swaps_axes, open_checked

    from .decode import NotABackground, encode_jpeg, read_background

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return {"status": "failed", "stage": "decode", "code": failure_code(exc),
                "reason": f"unreadable: {exc.strerror or exc}"}
    if not data:
        return {"status": "failed", "stage": "decode", "code": "empty_file", "reason": "empty file (0 bytes)"}
    iid = content_id(data)
    try:
        im = open_checked(path, cfg.max_pixels)
        w, h = im.size
        if exif_swaps_axes(im):
            w, h = h, w
        animated = bool(getattr(im, "is_animated", False))
        im.close()
        if min(w, h) < cfg.min_short_side:
            return {"status": "rejected", "stage": "resolution", "code": "too_small", "id": iid, "orig_size": [w, h],
                    "reason": f"too small: {w}x{h}, shorter side under {cfg.min_short_side}"}
        s = cfg.target_short_side / min(w, h)
        tw, th = max(1, round(w * s)), max(1, round(h * s))
        img, colour = read_background(path, (tw, th), cfg.max_pixels)
    except ImageReadError as exc:
        return {"status": "failed", "stage": "decode", "code": exc.code, "reason": exc.reason, "id": iid}
    except NotABackground as exc:
        return {"status": "rejected", "stage": "transparency", "code": "transparent", "id": iid, "orig_size": [w, h],
                "reason": str(exc)}
    atomic_write_bytes(cfg.out_dir / ".stage" / f"{iid}.jpg", encode_jpeg(img, cfg.quality, cfg.chroma))
    phash, mirror = image_hashes(img, cfg.hash)
    rec = {"status": "candidate", "id": iid, "orig_size": [w, h], "size": [tw, th], "hash": f"{phash:016x}",
           "hash_mirror": f"{mirror:016x}", "animated": animated}
    if colour:
        rec["colour"] = colour
    return rec


def image_hashes(img: np.ndarray, name: str) -> tuple[int, int]:
    """The perceptual hash of an RGB image and of its mirror image, as 64-bit integers.

    For phash both come from one 32x32 grey reduction (what imagehash.phash computes first), so
    the mirror costs a flip of 1,024 pixels instead of a second full-size resize."""
    import imagehash
    from PIL import Image

    hasher = getattr(imagehash, name)
    im = Image.fromarray(img)
    if name == "phash":
        im = im.convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    return (hash_to_int(hasher(im)),
            hash_to_int(hasher(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if name == "phash"
                               else Image.fromarray(np.ascontiguousarray(img[:, ::-1])))))


# ------------------------------------------------------------------ the run


def _source_list(cfg: BuildConfig) -> tuple[list[tuple[str, str | None]], dict[str, dict[str, str]]]:
    """(source, local path or None for URLs) for every distinct source, in a stable order, and
    each source's attribution (licence, author, source page) from the URL lists."""
    out: list[tuple[str, str | None]] = []
    attribution: dict[str, dict[str, str]] = {}
    for d in cfg.src_dirs:
        out.extend((str(p), str(p)) for p in list_images(d))
    for f in cfg.url_files:
        for url, attrib in read_url_records(f):
            out.append((url, None))
            if attrib and url not in attribution:
                attribution[url] = attrib
    seen: set[str] = set()
    uniq = []
    for s, p in out:
        if s not in seen:
            seen.add(s)
            uniq.append((s, p))
    return uniq, attribution


def fetch_policy(cfg: BuildConfig, resolve=None, connect=None) -> FetchPolicy:
    """The crawl policy of a build (``resolve`` / ``connect``: a stub network, for tests)."""
    extra = {k: v for k, v in (("resolve", resolve), ("connect", connect)) if v is not None}
    return FetchPolicy(allow_private=cfg.allow_private_networks,
                       disallowed_directives=tuple(cfg.disallowed_header_directives),
                       user_agent=user_agent(cfg.user_agent_contact), **extra)


def run_build(cfg: BuildConfig, progress: bool = True, log=print, resolve=None, connect=None) -> Stats:
    """Build the set: every stage below in turn, each reading and writing the manifest, whose
    per-source records are also the resume state (a killed build runs again from where it was)."""
    t_all = time.perf_counter()
    run = _open_run(cfg, progress)
    _stage_licences(run)
    detect = _checked_detector(cfg) if cfg.screen else None  # before any work: a missing model stops here
    fetched = _stage_fetch(run, resolve, connect)
    _stage_prepare(run, fetched)
    del fetched
    dd = _stage_dedup(run)
    det_key = _stage_screen(run, dd, detect)
    verdicts = _stage_decide(run, dd, det_key)
    kept = _stage_place(run, verdicts, dd.placed)
    return _stage_report(run, dd, verdicts, kept, t_all)


@dataclass
class _Run:
    """What every stage of one build shares: the settings, the output folder, the manifest, the
    counters, the source list with its attribution, and the sources the licence rule bars."""

    cfg: BuildConfig
    out: Path
    manifest: Manifest
    stats: Stats
    sources: list[tuple[str, str | None]]
    attribution: dict[str, dict[str, str]]
    progress: bool
    barred: dict[str, str] = field(default_factory=dict)

    def bar(self, total: int, desc: str, unit: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, disable=not self.progress, dynamic_ncols=True)


@dataclass
class _Dedup:
    """The dedup stage's result: candidates by id, the licence-barred ones apart, sources that are
    exact copies, the ids in order, the previous placements, and each near copy's representative."""

    cands: dict[str, Candidate]
    barred_cands: dict[str, Candidate]
    exact_dups: dict[str, str]
    ids: list[str]
    placed: dict[str, str]
    dup_of: dict[str, str]
    group_split: dict[str, str]


def _open_run(cfg: BuildConfig, progress: bool) -> _Run:
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    for d in (".stage", ".downloads", "train", "testval"):
        (out / d).mkdir(exist_ok=True)
    remove_stale_temporaries(out)
    sources, attribution = _source_list(cfg)
    return _Run(cfg, out, Manifest(out / "manifest.jsonl"), Stats(), sources, attribution, progress)


def _stage_licences(run: _Run) -> None:
    """A source the licence rule excludes is neither downloaded nor used (re-checked each run)."""
    cfg, manifest, sources, attribution, barred = run.cfg, run.manifest, run.sources, run.attribution, run.barred
    for s, _ in sources:
        why = license_rejection(attribution.get(s, {}).get("license"), cfg.require_license, cfg.licenses)
        if why is not None:
            barred[s] = why
            rec = manifest.get(f"source:{s}")
            if rec is None or rec.get("stage") == "license":
                manifest.append({"key": f"source:{s}", "type": "source", "source": s, "status": "rejected",
                                 "stage": "license", "code": "licence", "reason": why, "attribution": attribution.get(s, {})})


def _stage_fetch(run: _Run, resolve, connect) -> set[str]:
    """Download what is not prepared yet; returns the URLs whose body is in OUT/.downloads."""
    cfg, out, manifest, stats = run.cfg, run.out, run.manifest, run.stats
    sources, attribution, barred = run.sources, run.attribution, run.barred
    # -- fetch: URLs not yet prepared; a finished download of a killed run is used as it is
    t = time.perf_counter()
    todo_urls = []
    for s, p in sources:
        if p is None and s not in barred:
            if not _done(manifest, s, out, cfg):
                todo_urls.append(s)
            elif _download_path(out, s).exists():  # prepared, but killed before its download was removed
                _download_path(out, s).unlink()
    fetched: set[str] = set()  # URLs whose body is in OUT/.downloads (the path follows from the URL)
    to_fetch = []
    for u in todo_urls:
        if _download_path(out, u).is_file():  # written atomically, so a file that exists is a whole body
            fetched.add(u)
        else:
            to_fetch.append(u)
    n_reused = len(fetched)
    del todo_urls
    if to_fetch:
        bar = run.bar(len(to_fetch), "download", "url")
        for r in _fetch_bounded(to_fetch, cfg, fetch_policy(cfg, resolve, connect)):
            if r.ok and r.data:
                dl = _download_path(out, r.url)
                atomic_write_bytes(dl, r.data)
                r.data = None  # the body is on disk: release it now, not when the pool closes
                fetched.add(r.url)
                manifest.append({"key": f"download:{r.url}", "type": "download", "path": dl.name, **r.record()})
            elif r.code in POLICY_STAGES:  # refused by the crawl policy: rejected, not failed
                manifest.append({"key": f"source:{r.url}", "type": "source", "source": r.url, "status": "rejected",
                                 "stage": r.code, "code": r.code, "reason": r.error, "download": r.record(),
                                 "attribution": attribution.get(r.url, {})})
            else:
                manifest.append({"key": f"source:{r.url}", "type": "source", "source": r.url, "status": "failed",
                                 "stage": "download", "code": r.error_code or "empty_body",
                                 "reason": r.error or "empty body", "download": r.record(),
                                 "attribution": attribution.get(r.url, {})})
            bar.update(1)
        bar.close()
    manifest.sync()
    stats.seconds["download"] = time.perf_counter() - t
    stats.items["download"] = len(to_fetch)
    stats.counts["downloads_reused"] = n_reused
    return fetched


def _stage_prepare(run: _Run, fetched: set[str]) -> None:
    cfg, out, manifest, stats = run.cfg, run.out, run.manifest, run.stats
    sources, attribution, barred = run.sources, run.attribution, run.barred
    # -- prepare: every source not yet in the manifest
    t = time.perf_counter()
    jobs = [sp for sp in sources  # the same tuples as `sources`: a reference per job, not a copy
            if sp[0] not in barred and (sp[1] is not None or sp[0] in fetched) and not _done(manifest, sp[0], out, cfg)]
    if jobs:
        from rssn.executor import run_tasks

        bar = run.bar(len(jobs), "prepare", "image")
        for k, rec, exc in run_tasks(prepare_source, _PrepareTasks(jobs, out, cfg), workers=cfg.workers,
                                     executor=cfg.executor, ray_address=cfg.ray_address, retries=cfg.retries):
            s = jobs[k][0]
            if exc is not None:  # a crashed worker fails this source, not the run
                rec = {"status": "failed", "stage": "decode", "code": "worker_crashed",
                       "reason": f"{exc.__class__.__name__}: {exc}"}
            manifest.append({"key": f"source:{s}", "type": "source", "source": s, **rec,
                             "attribution": attribution.get(s, {})})
            if s in fetched:
                try:
                    os.unlink(_download_path(out, s))
                except OSError:
                    pass
            bar.update(1)
        bar.close()
    manifest.sync()
    stats.seconds["prepare"] = time.perf_counter() - t
    stats.items["prepare"] = len(jobs)
    del jobs, fetched


def _stage_dedup(run: _Run) -> _Dedup:
    cfg, out, manifest, stats, sources, barred = run.cfg, run.out, run.manifest, run.stats, run.sources, run.barred
    # -- dedup over every eligible candidate (new and old); licence-barred sources take no part
    t = time.perf_counter()
    current = {s for s, _ in sources}
    cands: dict[str, Candidate] = {}
    barred_cands: dict[str, Candidate] = {}
    exact_dups: dict[str, str] = {}
    for key in manifest.keys():
        if not key.startswith("source:") or key[7:] not in current:
            continue
        srec = manifest.get(key)
        if srec is None or srec["type"] != "source" or srec.get("status") != "candidate":
            continue
        if srec["source"] in barred:
            barred_cands.setdefault(srec["id"], Candidate.of(srec))
            continue
        iid = srec["id"]
        if iid in cands:
            first = min(cands[iid].source, srec["source"])
            exact_dups[max(cands[iid].source, srec["source"])] = iid
            if srec["source"] == first:
                cands[iid] = Candidate.of(srec)
        else:
            cands[iid] = Candidate.of(srec)
    barred_cands = {i: r for i, r in barred_cands.items() if i not in cands}  # same bytes, eligible source: it wins
    ids = sorted(cands)
    placed = _placed(manifest, out)
    was_kept = {p.stem for split in ("train", "testval") for p in (out / split).glob("*.jpg")}
    dup_of = _near_duplicates(ids, cands, was_kept, cfg.dedup_distance)
    group_split = {i: placed.get(i) or split_of(i, cfg.val_fraction) for i in ids if i not in dup_of}
    stats.seconds["dedup"] = time.perf_counter() - t
    stats.items["dedup"] = len(ids)
    return _Dedup(cands, barred_cands, exact_dups, ids, placed, dup_of, group_split)


def _stage_screen(run: _Run, dd: _Dedup, detect) -> str:
    """Screen the unique candidates not yet screened by this detector; returns the detector's key."""
    cfg, out, manifest, stats = run.cfg, run.out, run.manifest, run.stats
    ids, dup_of, cands = dd.ids, dd.dup_of, dd.cands
    # -- screen the unique candidates not yet screened by this detector, in batches of one shape
    t = time.perf_counter()
    unique = [i for i in ids if i not in dup_of]
    det_key = f"{cfg.detector}|{cfg.imgsz}"
    floor = min(cfg.conf, 0.05)
    to_screen = [i for i in unique if not _screened(manifest, i, det_key, floor)] if cfg.screen else []
    if to_screen:
        assert detect is not None  # to_screen is empty without cfg.screen
        bar = run.bar(len(to_screen), "screen", "image")
        for batch in shape_batches(to_screen, {i: (cands[i].size[0], cands[i].size[1]) for i in to_screen}, cfg.detect_batch):
            for i, dets in zip(batch, detect([str(out / ".stage" / f"{i}.jpg") for i in batch], floor)):
                manifest.append({"key": f"detect:{i}", "type": "detections", "id": i, "detector": det_key,
                                 "min_conf": floor, "detections": [d.as_list() for d in dets]})
            bar.update(len(batch))
        bar.close()
    manifest.sync()
    stats.seconds["screen"] = time.perf_counter() - t
    stats.items["screen"] = len(to_screen)
    return det_key


def _stage_decide(run: _Run, dd: _Dedup, det_key: str) -> dict[str, dict[str, Any]]:
    cfg, manifest, attribution, barred = run.cfg, run.manifest, run.attribution, run.barred
    ids, dup_of, cands, barred_cands, placed, group_split = \
        dd.ids, dd.dup_of, dd.cands, dd.barred_cands, dd.placed, dd.group_split
    # -- decide
    decisions = read_decisions(cfg.decisions) if cfg.decisions else {}
    classes = set(cfg.classes) if cfg.classes else None
    verdicts: dict[str, dict[str, Any]] = {}
    for i in sorted(barred_cands):  # left out of dedup and screening; the licence rule is final
        cand = barred_cands[i]
        verdicts[i] = {"id": i, "source": cand.source, "orig_size": cand.orig_size,
                       "attribution": attribution.get(cand.source, {}), "detections": [], "verdict": "rejected",
                       "reason": f"licence: {barred[cand.source]}", "code": "licence", "licence_rejected": True,
                       "split": placed.get(i) or split_of(i, cfg.val_fraction)}
    for i in ids:
        cand = cands[i]
        v: dict[str, Any] = {"id": i, "source": cand.source, "orig_size": cand.orig_size,
                             "attribution": attribution.get(cand.source, {})}
        dets = []
        drec = manifest.get(f"detect:{i}")
        if drec is not None and drec["detector"] == det_key:
            dets = [Detection.from_list(d) for d in drec["detections"]]
        v["detections"] = [d.as_list() for d in dets]
        if i in dup_of:
            v.update(verdict="rejected", code="duplicate", reason=f"near duplicate of {dup_of[i]}", duplicate_of=dup_of[i])
        elif cfg.screen:
            hit = rejecting_detection(dets, classes, cfg.conf, cfg.min_box_fraction)
            if hit is not None:
                v.update(verdict="rejected", code="salient_object", object=hit.name,
                         reason=f"salient object: {hit.name} {hit.conf:.2f} covering "
                                f"{hit.area_fraction * 100:.0f}% of the image")
            else:
                v.update(verdict="kept", reason="no salient object")
        else:
            v.update(verdict="kept", reason="not screened")
        if i in decisions:
            v["automatic"] = v["verdict"]
            v["verdict"] = "kept" if decisions[i] == "keep" else "rejected"
            v["reason"] = f"manual decision: {decisions[i]} (automatic: {v['automatic']}, {v['reason']})"
            v["code"] = "manual_keep" if decisions[i] == "keep" else "manual_reject"
        # once placed, an image never changes split; otherwise it takes its group's split
        v["split"] = placed.get(i) or group_split[dup_of.get(i, i)]
        verdicts[i] = v
    return verdicts


def _stage_place(run: _Run, verdicts: dict[str, dict[str, Any]], placed: dict[str, str]) -> set[str]:
    """Put the kept images in train/ or testval/ (a placed image never moves); returns their ids."""
    out, manifest = run.out, run.manifest
    # -- place
    kept = {i for i, v in verdicts.items() if v["verdict"] == "kept"}
    for split in ("train", "testval"):
        for placed_file in (out / split).glob("*.jpg"):
            if placed_file.stem not in kept or verdicts[placed_file.stem]["split"] != split:
                placed_file.unlink()
    for i in sorted(kept):
        dst = out / verdicts[i]["split"] / f"{i}.jpg"
        if not dst.exists():
            _link_or_copy(out / ".stage" / f"{i}.jpg", dst)
        if i not in placed:
            manifest.append({"key": f"placed:{i}", "type": "placed", "id": i, "split": verdicts[i]["split"]})
    manifest.sync()
    return kept


def _stage_report(run: _Run, dd: _Dedup, verdicts: dict[str, dict[str, Any]], kept: set[str], t_all: float) -> Stats:
    cfg, out, manifest, stats, sources, attribution = \
        run.cfg, run.out, run.manifest, run.stats, run.sources, run.attribution
    current = {s for s, _ in sources}
    exact_dups, ids, barred_cands = dd.exact_dups, dd.ids, dd.barred_cands
    all_ids = sorted(verdicts)
    # -- report
    def current_sources():
        for key in manifest.keys():
            if key.startswith("source:") and key[7:] in current:
                src = manifest.get(key)
                if src is not None and src["type"] == "source":
                    yield src

    def failed_rows():  # review.html's table, read again from the manifest as the page is written
        for rec in current_sources():
            if rec["status"] != "candidate" and rec.get("stage") != "opt_out":  # opted out: a locked card
                yield rec

    opted_out = []
    n_failed = 0
    for rec in current_sources():
        if rec["status"] in ("failed", "rejected"):
            stats.counts[f"{rec['status']}_{rec.get('stage', 'decode')}"] += 1
            # by the record's code; records of runs before codes existed are classed by their reason
            stats.reasons[rec.get("code") or (rec["stage"] if rec.get("stage") in POLICY_STAGES
                                               else _reason_class(rec["reason"]))] += 1
        if rec.get("stage") == "opt_out":
            opted_out.append(_opt_out_card(rec, attribution.get(rec["source"], {})))
        elif rec["status"] != "candidate":
            n_failed += 1
    stats.counts["exact_duplicate_sources"] = len(exact_dups)
    for v in verdicts.values():
        if v["verdict"] == "rejected":
            key = "license" if v.get("licence_rejected") else "near_duplicate" if "duplicate_of" in v and "automatic" not in v else (
                "manual" if "automatic" in v else "salient_object")
            stats.counts[f"rejected_{key}"] += 1
    stats.counts["sources"] = len(sources)
    stats.counts["candidates"] = len(ids) + len(barred_cands)
    stats.counts["kept"] = len(kept)
    stats.counts["train"] = sum(1 for i in kept if verdicts[i]["split"] == "train")
    stats.counts["testval"] = len(kept) - stats.counts["train"]
    stats.seconds["total"] = time.perf_counter() - t_all
    atomic_write_json(out / "verdicts.json", [verdicts[i] for i in all_ids], indent=1)
    write_stats(out / "stats.json", stats, cfg)
    write_attribution(out / "ATTRIBUTION.csv", [verdicts[i] for i in sorted(kept)])
    from .review import write_review

    write_review(out, [verdicts[i] for i in all_ids] + opted_out, failed_rows(), n_failed)
    manifest.compact()
    return stats


def _detector(cfg: BuildConfig):
    """(detect(paths, min_conf), class names): in this process, or in a Ray actor (on a GPU when
    the cluster has one)."""
    if cfg.executor != "ray":
        det = Detector(cfg.detector, cfg.imgsz)
        return det.detect_paths, set(det.names.values())
    from rssn.executor import ensure_ray

    from .screen import DetectorError

    ray = ensure_ray(cfg.ray_address, cfg.workers)
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    actor = ray.remote(num_gpus=gpus)(Detector).remote(cfg.detector, cfg.imgsz, "cuda:0" if gpus else "cpu")

    def detect(paths: list[str], min_conf: float):
        try:
            return ray.get(actor.detect_paths.remote(paths, min_conf))
        except Exception as exc:
            raise DetectorError(str(exc).strip().splitlines()[-1]) from None

    try:
        names = set(ray.get(actor.class_names.remote()))
    except Exception as exc:
        raise DetectorError(str(exc).strip().splitlines()[-1]) from None
    return detect, names


def _checked_detector(cfg: BuildConfig):
    """The detector, loaded before any download, with every --classes name checked against it."""
    from .screen import DetectorError

    detect, names = _detector(cfg)
    unknown = sorted(set(cfg.classes or ()) - names)
    if unknown:
        raise DetectorError(
            f"--classes {','.join(unknown)}: not a class of the detector {cfg.detector!r} (a misspelt class would "
            f"silently screen nothing); its classes are: {', '.join(sorted(names))}")
    return detect


def shape_batches(ids: list[str], sizes: dict[str, tuple[int, int]], batch: int) -> list[list[str]]:
    """Batches of at most ``batch`` ids whose images have one size, so that every image gets
    the network input it would get alone (a mixed batch is padded to its largest shape)."""
    by_size: dict[tuple[int, int], list[str]] = {}
    for i in ids:
        by_size.setdefault(sizes[i], []).append(i)
    return [g[k : k + batch] for _, g in sorted(by_size.items()) for k in range(0, len(g), batch)]


class _PrepareTasks(Sequence):
    """The (source, path, cfg) task of each job, made when the executor takes it (a list of
    them all would hold a path string and a tuple per source)."""

    def __init__(self, jobs: list[tuple[str, str | None]], out: Path, cfg: BuildConfig):
        self.jobs, self.out, self.cfg = jobs, out, cfg

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        s, p = self.jobs[i]
        return s, p if p is not None else str(_download_path(self.out, s)), self.cfg


def _fetch_bounded(urls: list[str], cfg: BuildConfig, policy: FetchPolicy | None = None):
    """Fetched results as they complete. At most cfg.max_per_host URLs of one host and
    download_workers URLs in all are in flight, and at most DOWNLOADS_IN_FLIGHT_PER_WORKER x
    download_workers more are read ahead of them, so memory does not grow with the list. A URL
    whose host is busy waits in the read-ahead while URLs of other hosts go first, so that a
    thread never idles on one busy host (a redirect onto a busy host waits in `fetch`)."""
    window = DOWNLOADS_IN_FLIGHT_PER_WORKER * cfg.download_workers
    policy = policy or fetch_policy(cfg)
    slots = HostSlots(cfg.max_per_host)
    it = iter(urls)
    waiting: dict[str, deque[str]] = {}  # read ahead, by host, in list order
    busy: Counter = Counter()  # in flight, by host
    pending: dict[cf.Future, str] = {}  # future -> its host
    with cf.ThreadPoolExecutor(cfg.download_workers) as pool:
        def fill() -> None:
            n_waiting = sum(map(len, waiting.values()))
            for u in it if n_waiting < window else ():
                waiting.setdefault(_host_key(u), deque()).append(u)
                n_waiting += 1
                if n_waiting >= window:
                    break
            for h in list(waiting):
                q = waiting[h]
                while q and busy[h] < cfg.max_per_host and len(pending) < cfg.download_workers:
                    fut = pool.submit(fetch, q.popleft(), timeout=cfg.timeout, max_bytes=cfg.max_bytes,
                                      max_redirects=cfg.max_redirects, retries=cfg.retries, policy=policy, slots=slots)
                    pending[fut] = h
                    busy[h] += 1
                if not q:
                    del waiting[h]

        fill()
        while pending:
            done, _ = cf.wait(set(pending), return_when=cf.FIRST_COMPLETED)
            for fut in done:
                busy[pending.pop(fut)] -= 1
            fill()
            for fut in done:
                yield fut.result()
            del done, fut  # no reference to a finished body outlives its turn


def _host_key(url: str) -> str:
    """The host an URL's connections go to first (as `download.HostSlots` names it)."""
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def _download_path(out: Path, url: str) -> Path:
    return out / ".downloads" / hashlib.sha256(url.encode()).hexdigest()[:24]


def _placed(manifest: Manifest, out: Path) -> dict[str, str]:
    """id -> split of every image ever placed (``placed:`` records; files of older runs too)."""
    placed: dict[str, str] = {}
    for key in manifest.keys():
        if key.startswith("placed:"):
            r = manifest.get(key)
            if r is not None:
                placed[r["id"]] = r["split"]
    for split in ("train", "testval"):
        for p in (out / split).glob("*.jpg"):
            placed.setdefault(p.stem, split)
    return placed


def _near_duplicates(ids: list[str], cands: dict[str, Candidate], was_kept: set[str],
                     max_distance: int) -> dict[str, str]:
    """id -> its representative's id, for every candidate that is a near copy of another.

    Priority for representatives: images kept by the previous run (they stay kept when a
    larger copy arrives), then the largest original, then the smallest id."""
    if not ids:
        return {}
    hashes = [int(cands[i].hash, 16) for i in ids]
    mirrored = [int(m, 16) if (m := cands[i].hash_mirror) else None for i in ids]
    order = sorted(range(len(ids)), key=lambda k: (ids[k] not in was_kept,
                                                   -cands[ids[k]].orig_size[0] * cands[ids[k]].orig_size[1],
                                                   ids[k]))
    rep = assign_groups(hashes, mirrored, order, max_distance, DEDUP_BUCKET_CAP)
    return {ids[k]: ids[r] for k, r in enumerate(rep) if r != k}


def _done(manifest: Manifest, source: str, out: Path, cfg: BuildConfig) -> bool:
    """A source whose processing finished (a candidate needs its staged file)."""
    rec = manifest.get(f"source:{source}")
    if rec is None:
        return False
    if rec["status"] == "candidate":
        return (out / ".stage" / f"{rec['id']}.jpg").exists()
    # refusals by the crawl policy stand while the policy that made them does: a host that
    # opted out is not asked again, but is once its directives are no longer honoured
    if rec.get("stage") == "private_network":
        return not cfg.allow_private_networks
    if rec.get("stage") == "opt_out":
        seen = set(rec.get("download", {}).get("directives", []))
        return bool(seen & {d.lower() for d in cfg.disallowed_header_directives})
    # download failures are tried again on the next run; licence rejections are re-checked each run
    return rec.get("stage") not in ("download", "license")


def _screened(manifest: Manifest, iid: str, det_key: str, floor: float) -> bool:
    rec = manifest.get(f"detect:{iid}")
    return rec is not None and rec["detector"] == det_key and rec["min_conf"] <= floor


def _opt_out_card(rec: dict[str, Any], attribution: dict[str, str]) -> dict[str, Any]:
    """A locked review card for an opted-out source: no image (its bytes were never read), an
    id from its URL (it has no content id)."""
    return {"id": "opt-out-" + hashlib.sha256(rec["source"].encode()).hexdigest()[:12], "source": rec["source"],
            "attribution": attribution, "detections": [], "verdict": "rejected", "reason": rec["reason"],
            "opt_out": True, "split": "-"}


def split_of(iid: str, val_fraction: float) -> str:
    """A stable split from the content id."""
    return "testval" if int(iid[:8], 16) / 2**32 < val_fraction else "train"


def read_decisions(path: Path) -> dict[str, str]:
    """A CSV of image id and keep/reject (header optional)."""
    out: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            if len(row) < 2 or row[0].strip().lower() in ("id", "image", "image_id"):
                continue
            iid, d = Path(row[0].strip()).stem, row[1].strip().lower()
            if d not in ("keep", "reject"):
                raise ValueError(f"{path}: decision for {iid!r} must be keep or reject, not {d!r}")
            out[iid] = d
    return out


def _link_or_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".tmp-{dst.name}")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _reason_class(reason: str) -> str:
    r = reason.lower()
    for key in ("licence", "too small", "transparent", "pixel limit", "empty file", "not a readable image", "cannot decode", "http ",
                "cannot connect", "redirect", "over the limit", "slow", "no response", "only http", "connection broke"):
        if key in r:
            return key.strip()
    return "other"


def write_attribution(path: Path, kept: list[dict[str, Any]]) -> None:
    """OUT/ATTRIBUTION.csv: id, url, license, author, source for every kept image."""
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "url", *ATTRIBUTION_FIELDS])
    for v in kept:
        a = v.get("attribution", {})
        w.writerow([v["id"], v["source"], *(a.get(k, "") for k in ATTRIBUTION_FIELDS)])
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def write_stats(path: Path, stats: Stats, cfg: BuildConfig) -> None:
    per_second = {k: round(stats.items.get(k, 0) / s, 3) if s > 0 and stats.items.get(k) else None
                  for k, s in stats.seconds.items() if k != "total"}
    doc = {"counts": dict(sorted(stats.counts.items())), "reasons": dict(sorted(stats.reasons.items())),
           "seconds": {k: round(v, 3) for k, v in stats.seconds.items()}, "images_per_second": per_second,
           "config": {k: (str(v) if isinstance(v, Path) else list(map(str, v)) if isinstance(v, tuple) else v)
                      for k, v in asdict(cfg).items()}}
    atomic_write_json(path, doc)
