"""`bg20k build` against a local HTTP server serving real photos, near duplicates and every
kind of bad response; dedup, the rejection rule, incremental runs, decisions, review page."""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from bg20k.build import BuildConfig, run_build, split_of
from bg20k.dedup import duplicate_groups, near_pairs
from bg20k.download import FetchPolicy, fetch, read_url_list
from bg20k.screen import Detection, rejecting_detection

from .conftest import run_cli, shared


def _jpeg(img: np.ndarray, q: int = 90) -> bytes:
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])[1].tobytes()


class Site:
    """Routes: path -> (status, headers, body) or a callable handling the request."""

    def __init__(self):
        self.routes: dict[str, object] = {}
        self.hits: dict[str, int] = {}
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                site.hits[self.path] = site.hits.get(self.path, 0) + 1
                route = site.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                if callable(route):
                    route(self)
                    return
                status, headers, body = route
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Content-Length" not in headers and body is not None:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body:
                    self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _slow(handler):
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Content-Length", "100000")
    handler.end_headers()
    try:
        for _ in range(100):
            handler.wfile.write(b"\xff" * 10)
            handler.wfile.flush()
            time.sleep(0.2)
    except OSError:
        pass


def _huge_chunked(handler):
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.end_headers()  # no length: the client must stop by itself
    try:
        for _ in range(400):
            handler.wfile.write(b"\0" * 65536)
    except OSError:
        pass


@pytest.fixture
def site():
    s = Site()
    yield s
    s.close()


def _serve_world(site: Site) -> dict[str, str]:
    """Real photos, near duplicates and bad responses; returns name -> URL."""
    bgs, objs = shared("backgrounds"), shared("backgrounds-with-objects")
    urls = {}
    for p in sorted(bgs.glob("*.jpg")) + sorted(objs.glob("*.jpg")):
        site.routes[f"/photos/{p.name}"] = (200, {"Content-Type": "image/jpeg"}, p.read_bytes())
        urls[p.stem] = f"{site.base}/photos/{p.name}"
    canyon = cv2.imread(str(bgs / "canyon.jpg"))
    h, w = canyon.shape[:2]
    small = cv2.resize(canyon, (w * 1200 // h, 1200), interpolation=cv2.INTER_AREA)
    crop = canyon[int(h * 0.02):int(h * 0.98), int(w * 0.02):int(w * 0.98)]
    tiny = cv2.resize(canyon, (900, 600), interpolation=cv2.INTER_AREA)
    site.routes["/dup/canyon-small.jpg"] = (200, {"Content-Type": "image/jpeg"}, _jpeg(small, 70))
    site.routes["/dup/canyon-crop.jpg"] = (200, {"Content-Type": "image/jpeg"}, _jpeg(crop, 85))
    site.routes["/tiny.jpg"] = (200, {"Content-Type": "image/jpeg"}, _jpeg(tiny))
    site.routes["/page.jpg"] = (200, {"Content-Type": "image/jpeg"}, b"<html><body>Not found</body></html>")
    site.routes["/truncated.jpg"] = (200, {"Content-Type": "image/jpeg"}, (bgs / "coast.jpg").read_bytes()[:20000])
    site.routes["/empty.jpg"] = (200, {"Content-Type": "image/jpeg"}, b"")
    site.routes["/big.jpg"] = (200, {"Content-Type": "image/jpeg", "Content-Length": str(30_000_000)}, None)
    site.routes["/chunked.jpg"] = _huge_chunked
    site.routes["/slow.jpg"] = _slow
    site.routes["/error.jpg"] = (500, {}, b"oops")
    site.routes["/loop1"] = (302, {"Location": "/loop2"}, b"")
    site.routes["/loop2"] = (302, {"Location": "/loop1"}, b"")
    site.routes["/to-file"] = (302, {"Location": "file:///etc/passwd"}, b"")
    urls.update({
        "canyon-small": f"{site.base}/dup/canyon-small.jpg", "canyon-crop": f"{site.base}/dup/canyon-crop.jpg",
        "tiny": f"{site.base}/tiny.jpg", "page": f"{site.base}/page.jpg", "truncated": f"{site.base}/truncated.jpg",
        "empty": f"{site.base}/empty.jpg", "big": f"{site.base}/big.jpg", "chunked": f"{site.base}/chunked.jpg",
        "slow": f"{site.base}/slow.jpg", "error": f"{site.base}/error.jpg", "missing": f"{site.base}/nothing-here.jpg",
        "loop": f"{site.base}/loop1", "to-file": f"{site.base}/to-file", "unreachable": "http://127.0.0.1:9/x.jpg",
        "ftp": "ftp://example.com/a.jpg", "escape": f"{site.base}/photos/../../../../etc/passwd",
    })
    return urls


def _sources(out: Path) -> dict[str, dict]:
    recs = [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines()]
    return {r["source"]: r for r in recs if r["type"] == "source"}


@pytest.mark.slow
def test_build_from_urls_keeps_the_right_images_and_records_every_failure(tmp_path, site):
    urls = _serve_world(site)
    lst = tmp_path / "urls.txt"
    lst.write_text("\n".join(urls.values()) + "\n")
    out = tmp_path / "bg"
    t = time.time()
    proc = run_cli("bg20k", "build", "--urls", str(lst), "--allow-private-networks",
                   "--out", str(out), "--no-screen", "--timeout", "2",
                   "--retries", "1", "--max-bytes", "20000000", "--workers", "2", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert time.time() - t < 120
    src = _sources(out)
    assert set(src) == set(urls.values())  # every URL has an outcome
    ok_names = ["canyon", "coast", "ferns", "misty-forest", "pier-sunset", "rocky-mountains", "snow-mountain",
                "birds", "spacecraft"]
    ids = {n: src[urls[n]]["id"] for n in ok_names}
    kept = {p.stem for d in ("train", "testval") for p in (out / d).glob("*.jpg")}
    assert kept == set(ids.values())
    verdicts = {v["id"]: v for v in json.loads((out / "verdicts.json").read_text())}
    for dup in ("canyon-small", "canyon-crop"):
        assert verdicts[src[urls[dup]]["id"]]["duplicate_of"] == ids["canyon"]  # the larger original is kept
    for i in kept:  # 1080 on the shorter side, stable split
        img = cv2.imread(str(out / split_of(i, 0.25) / f"{i}.jpg"))
        assert min(img.shape[:2]) == 1080
    reasons = {n: src[urls[n]]["reason"] for n in urls if n not in ok_names + ["canyon-small", "canyon-crop"]}
    assert "too small" in reasons["tiny"]
    assert "not a readable image" in reasons["page"]
    assert "cannot decode" in reasons["truncated"] or "not a readable image" in reasons["truncated"]
    assert "over the limit" in reasons["big"] and "over the limit" in reasons["chunked"]
    assert "slow" in reasons["slow"] or "stopped sending" in reasons["slow"]
    assert "HTTP 500" in reasons["error"] and src[urls["error"]]["download"]["attempts"] == 2
    assert "HTTP 404" in reasons["missing"]
    assert "redirect" in reasons["loop"] and "non-http" in reasons["to-file"]
    assert "cannot connect" in reasons["unreachable"] and "only http" in reasons["ftp"]
    assert "empty" in reasons["empty"]
    assert not [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".") and ".." in p.name]
    # every failure carries a stable code beside its sentence; stats group by the code
    codes = {n: src[urls[n]].get("code") for n in reasons}
    assert codes == {"tiny": "too_small", "page": "unreadable", "truncated": "unreadable", "big": "too_large",
                     "chunked": "too_large", "slow": "timeout", "error": "http_error", "missing": "http_error",
                     "loop": "bad_redirect", "to-file": "bad_redirect", "unreachable": "connect_error",
                     "ftp": "bad_url", "escape": "http_error", "empty": codes["empty"]} \
        and codes["empty"] in ("empty_body", "empty_file")
    assert verdicts[src[urls[dup]]["id"]]["code"] == "duplicate"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["counts"]["kept"] == 9 and stats["counts"]["rejected_near_duplicate"] == 2
    assert stats["reasons"]["http_error"] == 3 and stats["reasons"]["too_large"] == 2, stats["reasons"]

    # incremental: one new source; nothing accepted is fetched again
    hits_before = dict(site.hits)
    snow = cv2.imread(str(shared("backgrounds") / "snow-mountain.jpg"))
    site.routes["/new.jpg"] = (200, {"Content-Type": "image/jpeg"}, _jpeg(cv2.flip(snow, 0)))
    lst.write_text(lst.read_text() + f"{site.base}/new.jpg\n")
    proc = run_cli("bg20k", "build", "--urls", str(lst), "--allow-private-networks",
                   "--out", str(out), "--no-screen", "--timeout", "2",
                   "--retries", "0", "--workers", "1", "--quiet")
    assert proc.returncode == 0, proc.stderr
    for n in ok_names:
        assert site.hits[urls[n].replace(site.base, "")] == hits_before[urls[n].replace(site.base, "")]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["counts"]["kept"] == 10

    # a decisions file overrides the automatic verdicts
    dec = tmp_path / "decisions.csv"
    dec.write_text(f"id,decision\n{ids['birds']},reject\n{src[urls['canyon-crop']]['id']},keep\n")
    run_cli("bg20k", "build", "--urls", str(lst), "--allow-private-networks",
            "--out", str(out), "--no-screen", "--decisions", str(dec),
            "--timeout", "2", "--retries", "0", "--quiet", check=True)
    kept = {p.stem for d in ("train", "testval") for p in (out / d).glob("*.jpg")}
    assert ids["birds"] not in kept and src[urls["canyon-crop"]]["id"] in kept


class FakeDetector:
    """Known detections: a large 'airplane' on the spacecraft photo, a tiny 'bird' elsewhere."""

    names = {0: "airplane", 1: "bird", 2: "person"}

    def __init__(self, *a, **k):
        pass

    def detect_paths(self, paths, min_conf):
        from rssn.imageio import read_image

        return self.detect([read_image(p) for p in paths], min_conf)

    def detect(self, images, min_conf):
        out = []
        for im in images:  # told apart by content: the dark image holds the "airplane"
            out.append([Detection("airplane", 0.9, (0.3, 0.2, 0.7, 0.6))] if im.mean() < FakeDetector.dark else
                       [Detection("bird", 0.95, (0.1, 0.1, 0.12, 0.12))])
        return out


def test_screening_rejects_by_the_rule_and_review_shows_it(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    dark = (rng.random((1100, 1500, 3)) * 60).astype(np.uint8)
    light = (155 + rng.random((1100, 1400, 3)) * 100).astype(np.uint8)
    cv2.imwrite(str(src / "dark.jpg"), dark)
    cv2.imwrite(str(src / "light.png"), light)
    FakeDetector.dark = 100
    import bg20k.build as build

    monkeypatch.setattr(build, "Detector", FakeDetector)
    cfg = BuildConfig(out_dir=tmp_path / "bg", src_dirs=(src,), workers=1, detector="fake")
    stats = run_build(cfg, progress=False)
    verdicts = {Path(v["source"]).name: v for v in json.loads((tmp_path / "bg" / "verdicts.json").read_text())}
    assert verdicts["dark.jpg"]["verdict"] == "rejected" and "airplane 0.90 covering 16%" in verdicts["dark.jpg"]["reason"]
    assert verdicts["light.png"]["verdict"] == "kept"  # the bird's box is too small
    assert stats.counts["rejected_salient_object"] == 1
    page = (tmp_path / "bg" / "review.html").read_text()
    assert 'data-verdict="rejected"' in page and "airplane" in page
    # review in a real browser
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (make test installs Debian's chromium)")
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=3000", "--dump-dom",
                          (tmp_path / "bg" / "review.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count('class="card kept"') == 1 and dom.count('class="card rejected"') == 1
    assert "salient object: airplane" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'chrome2'}", f"--screenshot={shot}", "--window-size=1000,800",
                    (tmp_path / "bg" / "review.html").as_uri()], capture_output=True, timeout=120)
    img = cv2.imread(str(shot))
    assert img is not None
    # the rejected card's thumbnail has the red box drawn in it: some strongly red pixels exist
    assert ((img[..., 2] > 200) & (img[..., 1] < 80) & (img[..., 0] < 80)).sum() > 50


def test_rejection_rule_on_known_detections():
    big_person = Detection("person", 0.8, (0.1, 0.1, 0.6, 0.6))  # covers 25%
    faint = Detection("person", 0.1, (0.0, 0.0, 1.0, 1.0))
    small_dog = Detection("dog", 0.9, (0.0, 0.0, 0.1, 0.1))  # covers 1%
    assert rejecting_detection([big_person], None, 0.25, 0.05) == big_person
    assert rejecting_detection([faint], None, 0.25, 0.05) is None
    assert rejecting_detection([small_dog], None, 0.25, 0.05) is None
    assert rejecting_detection([small_dog], None, 0.25, 0.01) == small_dog
    assert rejecting_detection([big_person], {"dog"}, 0.25, 0.05) is None
    assert Detection("x", 1, (-0.5, 0.5, 0.5, 1.5)).area_fraction == pytest.approx(0.25)


def test_yolo_from_yaml_runs_batched_on_real_photos():
    from bg20k.screen import Detector

    det = Detector("yolov8n.yaml", imgsz=320)
    photos = [cv2.imread(str(p))[..., ::-1] for p in sorted(shared("backgrounds").glob("*.jpg"))[:2]]
    out = det.detect([cv2.resize(p, (480, 320)) for p in photos], 0.0)
    assert len(out) == 2 and all(isinstance(d, Detection) for dets in out for d in dets)
    assert len(det.names) == 80


def test_offline_named_weights_is_one_clear_error(tmp_path, monkeypatch):
    from bg20k.screen import Detector, DetectorError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DetectorError, match="--detector /path/to/yolov8n.pt.*--no-screen"):
        Detector("yolov8n.pt")


def test_dedup_matches_brute_force_and_groups():
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**63, 3000, dtype=np.uint64)
    h[10] = h[3] ^ np.uint64(0b1011)
    h[11] = h[10] ^ np.uint64(1 << 50 | 1 << 20)
    h[12] = h[3]
    for d in (0, 3, 6, 9):
        x = np.bitwise_count(h[:, None] ^ h[None, :])
        ii, jj = np.nonzero(np.triu(x <= d, 1))
        assert set(zip(ii.tolist(), jj.tolist())) == set(map(tuple, near_pairs(h, d).tolist())), d
    g = duplicate_groups(h, 4)
    assert g[3] == g[10] == g[11] == g[12] and len(set(g.tolist())) == 3000 - 3


def test_url_lists_and_fetch_limits(tmp_path, site):
    (tmp_path / "a.csv").write_text("id,url\n1,http://x/a.jpg\n2,https://x/b.jpg\n")
    (tmp_path / "b.jsonl").write_text('{"url": "http://x/c.jpg"}\n{"url": "http://x/d.jpg"}\n')
    (tmp_path / "c.txt").write_text("# comment\nhttp://x/e.jpg\n\n")
    assert read_url_list(tmp_path / "a.csv") == ["http://x/a.jpg", "https://x/b.jpg"]
    assert read_url_list(tmp_path / "b.jsonl") == ["http://x/c.jpg", "http://x/d.jpg"]
    assert read_url_list(tmp_path / "c.txt") == ["http://x/e.jpg"]
    site.routes["/503"] = (503, {}, b"")
    sleeps = []
    r = fetch(f"{site.base}/503", retries=3, backoff=0.5, sleep=sleeps.append, policy=FetchPolicy(allow_private=True))
    assert not r.ok and r.attempts == 4 and sleeps == [0.5, 1.0, 2.0] and r.status == 503
    assert fetch("file:///etc/passwd").error.startswith("only http and https")
