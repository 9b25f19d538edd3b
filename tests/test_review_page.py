"""The clickable review page of `bg20k build`, driven in real headless Chromium, and the
licence columns of URL lists carried to the manifest, the page and ATTRIBUTION.csv."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from bg20k.build import BuildConfig, run_build
from bg20k.download import read_url_records
from bg20k.licenses import license_rejection, normalise_license, parse_allowed

from .cdp import Browser, find_chromium, wait_for_file
from .conftest import run_cli


def _photos(folder: Path, n: int = 4, seed: int = 0) -> list[Path]:
    """n distinct structured images (short side 1100) and a near duplicate of the first."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        small = (rng.random((11, 14, 3)) * 255).astype(np.uint8)
        img = cv2.resize(small, (1400, 1100), interpolation=cv2.INTER_CUBIC)
        p = folder / f"p{i}.jpg"
        cv2.imwrite(str(p), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        paths.append(p)
        if i == 0:
            dup = cv2.resize(img, (1500, 1178), interpolation=cv2.INTER_AREA)  # larger: kept over p0
            cv2.imwrite(str(folder / "p0-large.jpg"), np.clip(dup.astype(int) + 3, 0, 255).astype(np.uint8))
    return paths


@pytest.fixture
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("chromium is not installed (make test installs Debian's chromium)")
    return path


def _split_ids(out: Path) -> set[str]:
    return {p.stem for split in ("train", "testval") for p in (out / split).glob("*.jpg")}


@pytest.mark.slow
def test_click_two_cards_download_decisions_and_rebuild(tmp_path, chromium):
    src, out = tmp_path / "src", tmp_path / "bg"
    _photos(src)
    run_cli("bg20k", "build", "--src", str(src), "--out", str(out), "--no-screen", "--workers", "1", "--quiet",
            check=True)
    verdicts = {v["id"]: v for v in json.loads((out / "verdicts.json").read_text())}
    kept = sorted(i for i, v in verdicts.items() if v["verdict"] == "kept")
    dups = sorted(i for i, v in verdicts.items() if v["verdict"] == "rejected")
    assert len(kept) == 4 and len(dups) == 1 and _split_ids(out) == set(kept)
    to_reject, to_keep = kept[1], dups[0]

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with Browser(chromium, tmp_path / "profile") as b:
        b.open((out / "review.html").as_uri(), downloads)
        assert b.eval("document.querySelectorAll('.card').length") == 5
        b.click(f'.card[data-id="{to_reject}"]')
        b.click(f'.card[data-id="{to_keep}"]')
        assert b.eval(f"document.querySelector('.card[data-id=\"{to_reject}\"]').dataset.verdict") == "rejected"
        assert b.eval(f"document.querySelector('.card[data-id=\"{to_keep}\"]').dataset.verdict") == "kept"
        # the filter shows exactly the two changed cards
        b.eval("(() => { const s = document.getElementById('filter-verdict'); s.value = 'changed'; "
               "s.dispatchEvent(new Event('change')); })()")
        shown = b.eval("Array.from(document.querySelectorAll('.card')).filter(c => !c.hidden).map(c => c.dataset.id)")
        assert sorted(shown) == sorted([to_reject, to_keep])
        b.click("#download")
        data = wait_for_file(downloads / "decisions.csv").decode()
    rows = list(csv.reader(data.splitlines()))
    assert rows[0] == ["id", "decision"]
    assert sorted(rows[1:]) == sorted([[to_reject, "reject"], [to_keep, "keep"]])

    r = run_cli("bg20k", "build", "--src", str(src), "--out", str(out), "--no-screen", "--workers", "1", "--quiet",
                "--decisions", str(downloads / "decisions.csv"), check=True)
    assert _split_ids(out) == (set(kept) - {to_reject}) | {to_keep}, r.stderr
    after = {v["id"]: v for v in json.loads((out / "verdicts.json").read_text())}
    assert after[to_reject]["reason"].startswith("manual decision: reject")
    assert after[to_keep]["reason"].startswith("manual decision: keep")


@pytest.mark.slow
def test_keyboard_moves_and_decides(tmp_path, chromium):
    src, out = tmp_path / "src", tmp_path / "bg"
    _photos(src, n=3, seed=1)
    cfg = BuildConfig(out_dir=out, src_dirs=(src,), screen=False, workers=1)
    run_build(cfg, progress=False)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with Browser(chromium, tmp_path / "profile") as b:
        b.open((out / "review.html").as_uri(), downloads)
        ids = b.eval("Array.from(document.querySelectorAll('.card')).map(c => c.dataset.id)")
        b.key("ArrowRight")            # focus the first card
        b.key("ArrowRight")            # the second
        b.key("r", "KeyR", "r")        # reject it
        b.key("ArrowLeft")             # back to the first
        b.key("r", "KeyR", "r")
        b.key("k", "KeyK", "k")        # and keep it again: no change
        verdicts = b.eval("Array.from(document.querySelectorAll('.card')).map(c => c.dataset.verdict)")
        assert verdicts[0] == "kept" and verdicts[1] == "rejected"
        assert b.eval("document.getElementById('download').textContent") == "Download decisions.csv (1)"
        b.click("#download")
        data = wait_for_file(downloads / "decisions.csv").decode()
    assert data == f"id,decision\n{ids[1]},reject\n"


def test_licence_names_and_rule():
    assert normalise_license("CC BY 4.0") == "cc-by-4.0"
    assert normalise_license("https://creativecommons.org/licenses/by-sa/4.0/") == "cc-by-sa-4.0"
    assert normalise_license("https://creativecommons.org/publicdomain/zero/1.0/") == "cc0-1.0"
    assert normalise_license("CC0") == "cc0"
    allowed = parse_allowed("cc0, CC-BY")
    assert allowed == ("cc-by", "cc0")
    assert license_rejection("CC BY 2.0", False, allowed) is None          # any version of CC BY
    assert license_rejection("cc0-1.0", False, allowed) is None
    assert "not one of" in license_rejection("CC BY-SA 4.0", False, allowed)  # not CC BY
    assert "not one of" in license_rejection("all rights reserved", False, allowed)
    assert license_rejection("cc-by-2.0", False, parse_allowed("cc-by-4.0")) is not None  # a version is exact
    assert license_rejection(None, True, None).startswith("no licence")
    assert license_rejection(None, False, None) is None


def test_url_list_columns(tmp_path):
    (tmp_path / "a.csv").write_text("url,License,author,source\nhttp://x/a.jpg,CC BY 4.0,Ann,https://x/a\n"
                                    "http://x/b.jpg,,,\n")
    (tmp_path / "b.jsonl").write_text('{"url": "http://x/c.jpg", "licence": "cc0", "author": "Bo"}\n')
    assert read_url_records(tmp_path / "a.csv") == [
        ("http://x/a.jpg", {"license": "CC BY 4.0", "author": "Ann", "source": "https://x/a"}), ("http://x/b.jpg", {})]
    assert read_url_records(tmp_path / "b.jsonl") == [("http://x/c.jpg", {"license": "cc0", "author": "Bo"})]


def test_licences_follow_images_and_the_rule_bars_sources(tmp_path):
    from .test_bg20k import Site

    site = Site()
    try:
        rng = np.random.default_rng(3)
        names = ["a", "b", "c", "d"]
        for n in names:
            small = (rng.random((11, 14, 3)) * 255).astype(np.uint8)
            img = cv2.resize(small, (1400, 1100), interpolation=cv2.INTER_CUBIC)
            site.routes[f"/{n}.jpg"] = (200, {"Content-Type": "image/jpeg"},
                                        cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
        url = {n: f"{site.base}/{n}.jpg" for n in names}
        lst = tmp_path / "crawl.csv"
        lst.write_text("url,license,author,source\n"
                       f"{url['a']},CC BY 4.0,Ann Example,https://example.org/a\n"
                       f"{url['b']},CC BY-SA 4.0,Bo,https://example.org/b\n"
                       f"{url['c']},,,\n"
                       f"{url['d']},https://creativecommons.org/publicdomain/zero/1.0/,Di \"D\" Doe,\n")
        out = tmp_path / "bg"
        base = ["bg20k", "build", "--urls", str(lst), "--allow-private-networks",
                "--out", str(out), "--no-screen", "--workers", "1", "--quiet"]
        r = run_cli(*base, "--licenses", "cc0,cc-by", check=True)
        recs = {json.loads(l)["source"]: json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines()
                if json.loads(l)["type"] == "source"}
        # barred sources are never downloaded, and say why
        assert site.hits.get("/b.jpg") is None and site.hits.get("/c.jpg") is None
        assert recs[url["b"]]["stage"] == "license" and "not one of --licenses cc-by,cc0" in recs[url["b"]]["reason"]
        assert recs[url["c"]]["reason"].startswith("no licence")
        assert recs[url["a"]]["attribution"] == {"license": "CC BY 4.0", "author": "Ann Example",
                                                 "source": "https://example.org/a"}
        with open(out / "ATTRIBUTION.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert sorted((r["url"], r["license"], r["author"], r["source"]) for r in rows) == sorted([
            (url["a"], "CC BY 4.0", "Ann Example", "https://example.org/a"),
            (url["d"], "https://creativecommons.org/publicdomain/zero/1.0/", 'Di "D" Doe', "")])
        assert {r["id"] for r in rows} == {p.stem for s in ("train", "testval") for p in (out / s).glob("*.jpg")}
        page = (out / "review.html").read_text()
        assert "Ann Example" in page and "CC BY 4.0" in page and "not one of --licenses" in page
        assert "licence" in r.stderr

        # the rule is re-checked on every run: without --licenses but with --require-license,
        # b is fetched and kept, c (no licence) is still barred
        run_cli(*base, "--require-license", check=True)
        with open(out / "ATTRIBUTION.csv", newline="") as f:
            assert sorted(r["url"] for r in csv.DictReader(f)) == sorted([url["a"], url["b"], url["d"]])
        assert site.hits.get("/c.jpg") is None
        stats = json.loads((out / "stats.json").read_text())
        assert stats["counts"]["rejected_license"] == 1 and stats["counts"]["kept"] == 3
        # and a licensed image can no longer be kept by a --licenses run that excludes it
        run_cli(*base, "--licenses", "cc0", check=True)
        verdicts = {v["source"]: v for v in json.loads((out / "verdicts.json").read_text())}
        assert verdicts[url["a"]]["verdict"] == "rejected" and verdicts[url["a"]]["reason"].startswith("licence:")
        with open(out / "ATTRIBUTION.csv", newline="") as f:
            assert [r["url"] for r in csv.DictReader(f)] == [url["d"]]
    finally:
        site.close()
