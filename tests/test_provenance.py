"""Provenance through `rssn compose`: attribution read (bg20k's ATTRIBUTION.csv or given files),
carried into every record, OUT/ATTRIBUTION.csv and shards, the licence rule at compose time,
and the dataset card (same settings, same bytes)."""
from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from rssn.provenance import AttributionError, read_attribution

from .conftest import run_cli, shared
from .helpers import make_tiny_set
from .test_bg20k import Site

# licence of each served photo as a crawl list would spell it ("" = none given)
LICENCES = {"canyon": "CC BY 4.0", "ferns": "https://creativecommons.org/licenses/by/4.0/", "misty-forest": "CC0",
            "pier-sunset": "cc0-1.0", "rocky-mountains": "", "coast": "CC0", "snow-mountain": "CC BY 4.0"}
EXPECTED_KEY = {"CC BY 4.0": "cc-by-4.0", "https://creativecommons.org/licenses/by/4.0/": "cc-by-4.0",
                "CC0": "cc0", "cc0-1.0": "cc0-1.0", "": "unknown"}


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _records(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines()]


def _composites(out: Path) -> list[dict]:
    return [r for r in _records(out) if r["type"] == "composite"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A bg20k build from a local server (CC BY, CC0 and unlicensed photos), small outputs; returns
    (build folder, url -> list row, foreground folder)."""
    bgs = shared("backgrounds")
    root = tmp_path_factory.mktemp("prov")
    site = Site()
    try:
        rows = {}
        lines = ["url,license,author,source"]
        for name, lic in LICENCES.items():
            site.routes[f"/photos/{name}.jpg"] = (200, {"Content-Type": "image/jpeg"}, (bgs / f"{name}.jpg").read_bytes())
            url = f"{site.base}/photos/{name}.jpg"
            rows[url] = {"name": name, "license": lic, "author": f"Author of {name}", "source": f"https://example.org/{name}"}
            lines.append(f'{url},"{lic}",Author of {name},https://example.org/{name}')
        (root / "urls.csv").write_text("\n".join(lines) + "\n")
        out = root / "bg20k"
        run_cli("bg20k", "build", "--urls", str(root / "urls.csv"), "--allow-private-networks",
                "--out", str(out), "--no-screen",
                "--min-short-side", "100", "--target-short-side", "160", "--workers", "1", "--quiet", check=True)
    finally:
        site.close()
    fg, _ = make_tiny_set(root / "tiny", n_fg=3, n_bg=1)
    return out, rows, fg


def _id_to_row(build: Path, rows: dict) -> dict[str, dict]:
    """bg20k id -> the URL list row it was downloaded from (through bg20k's own manifest)."""
    recs = [json.loads(l) for l in (build / "manifest.jsonl").read_text().splitlines()]
    return {r["id"]: rows[r["source"]] for r in recs if r["type"] == "source" and r.get("status") == "candidate"}


def test_attribution_follows_each_composite_and_card_counts_match(built, tmp_path):
    build, rows, fg = built
    by_id = _id_to_row(build, rows)
    train = {p.stem for p in (build / "train").glob("*.jpg")}
    assert {EXPECTED_KEY[by_id[i]["license"]] for i in train} == {"cc-by-4.0", "cc0", "cc0-1.0", "unknown"}
    out = tmp_path / "comp"
    run_cli("rssn", "compose", "--fg", str(fg), "--bg", str(build / "train"), "--out", str(out), "--per-fg", "4",
            "--denoise-p", "0", "--blur-p", "0", "--noise-p", "0", "--workers", "1", "--quiet", check=True)
    comps = {r["id"]: r for r in _composites(out)}
    attr = {r["composite_id"]: r for r in _csv(out / "ATTRIBUTION.csv")}
    assert set(attr) == set(comps) and len(comps) == 12
    cands = {i: cv2.imread(str(build / "train" / f"{i}.jpg"))[..., ::-1].astype(np.float64) for i in train}
    for cid, rec in comps.items():
        row = attr[cid]
        # the row names the background the composite really used: of every train background, the
        # one whose scaled crop is closest to OUT/bg/ID.png (decoding and scaling differ by a few levels,
        # other backgrounds by tens)
        bg = cv2.imread(str(out / "bg" / f"{cid}.png"))[..., ::-1].astype(np.float64)
        sw, sh = rec["bg"]["scaled_size"]
        x, y, w, h = rec["bg"]["crop"]
        err = {i: np.abs(cv2.resize(c, (sw, sh), interpolation=cv2.INTER_AREA)[y:y + h, x:x + w] - bg).mean()
               for i, c in cands.items()}
        assert min(err, key=err.get) == row["bg_id"], (cid, err)
        src = by_id[row["bg_id"]]
        assert row["bg_license"] == (src["license"] or "unknown")
        assert (row["bg_author"], row["bg_source"]) == (src["author"], src["source"])
        assert rec["bg"]["attribution"]["license"] == row["bg_license"]
        assert row["fg_id"] == rec["fg"]["stem"] and row["fg_license"] == "unknown"
    facts = json.loads((out / "dataset.json").read_text())
    assert facts["what"]["composites"] == len(comps)
    expected: dict[str, list] = {}
    for rec in comps.values():
        key = EXPECTED_KEY[by_id[Path(rec["bg"]["path"]).stem]["license"]]
        expected.setdefault(key, [set(), 0])
        expected[key][0].add(Path(rec["bg"]["path"]).stem)
        expected[key][1] += 1
    got = {r["licence"]: [r["images"], r["composites"]] for r in facts["where"]["backgrounds"]["licences"]}
    assert got == {k: [len(s), n] for k, (s, n) in expected.items()}
    assert facts["where"]["backgrounds"]["attribution_file"] == "bg20k/ATTRIBUTION.csv"  # found beside train/
    card = (out / "DATASET.md").read_text()
    if "cc-by-4.0" in got:
        assert f"{got['cc-by-4.0'][0]} backgrounds CC BY 4.0 ({got['cc-by-4.0'][1]} composites): attribution required, see ATTRIBUTION.csv" in card
    assert not [t for t in facts["terms"] if t["kind"] == "bm3d"]  # --denoise-p 0: no bm3d note
    # the training store carries the same records, and the card and ATTRIBUTION.csv of its source
    store = tmp_path / "store"
    run_cli("gfm", "pack", "--data", str(out), "--out", str(store), "--workers", "1", "--quiet", check=True)
    packed = [json.loads(l) for l in (store / "samples.jsonl").read_text().splitlines()]
    packed = {r["name"]: r for r in packed if r["key"].startswith("sample:")}
    assert set(packed) == set(comps)
    for cid, rec in comps.items():
        assert packed[cid]["attribution"] == {"fg": rec["fg"]["attribution"], "bg": rec["bg"]["attribution"]}
    for name in ("DATASET.md", "dataset.json", "ATTRIBUTION.csv"):
        assert (store / "sources" / "00" / name).read_bytes() == (out / name).read_bytes()


@pytest.mark.slow
def test_licence_rule_at_compose_time_and_on_rerun(built, tmp_path):
    build, rows, fg = built
    by_id = _id_to_row(build, rows)
    train = {p.stem for p in (build / "train").glob("*.jpg")}
    cc0 = {i for i in train if EXPECTED_KEY[by_id[i]["license"]].startswith("cc0")}
    base = ["rssn", "compose", "--fg", str(fg), "--bg", str(build / "train"), "--per-fg", "3", "--denoise-p", "0",
            "--workers", "1", "--quiet"]
    # the rule applies to foregrounds too: without their licences none may be drawn
    proc = run_cli(*base, "--out", str(tmp_path / "nofg"), "--licenses", "cc0")
    assert proc.returncode == 2 and "no foreground passes the licence rule" in proc.stderr
    fg_attr = tmp_path / "fg.csv"
    fg_attr.write_text("id,license,author,source\n" + "".join(f"f{i:02d},CC0,Me,here\n" for i in range(3)))
    args = [*base, "--fg-attribution", str(fg_attr)]
    out = tmp_path / "cc0"
    run_cli(*args, "--out", str(out), "--licenses", "cc0", check=True)
    used = {Path(r["bg"]["path"]).stem for r in _composites(out)}
    assert used == cc0  # 3 slots over 2 CC0 backgrounds: both drawn, nothing else
    facts = json.loads((out / "dataset.json").read_text())
    assert facts["where"]["backgrounds"]["refused_by_licence_rule"] == len(train) - len(cc0)

    # a run without the rule, then the same folder with it: the rule is re-checked, composites over
    # other backgrounds are withdrawn and made again over CC0 ones
    out2 = tmp_path / "rerun"
    run_cli(*args, "--out", str(out2), check=True)
    before = {r["id"]: Path(r["bg"]["path"]).stem for r in _composites(out2)}
    assert set(before.values()) - cc0
    run_cli(*args, "--out", str(out2), "--licenses", "cc0", check=True)
    after = {r["id"]: Path(r["bg"]["path"]).stem for r in _composites(out2)}
    assert set(after) == set(before) and set(after.values()) <= cc0
    summary = json.loads((out2 / "summary.json").read_text())["summary"]
    assert summary["withdrawn"] == sum(v not in cc0 for v in before.values())
    assert {r["composite_id"]: r["bg_id"] for r in _csv(out2 / "ATTRIBUTION.csv")} == after
    # --require-license: the unlicensed background is refused, every other one may be drawn
    run_cli(*args, "--out", str(tmp_path / "req"), "--require-license", check=True)
    facts = json.loads((tmp_path / "req" / "dataset.json").read_text())
    unlicensed = {i for i in train if not by_id[i]["license"]}
    assert facts["where"]["backgrounds"]["refused_by_licence_rule"] == len(unlicensed) == 1
    assert not {Path(r["bg"]["path"]).stem for r in _composites(tmp_path / "req")} & unlicensed


@pytest.mark.slow
def test_card_same_settings_same_bytes_and_changes_with_the_route(tmp_path):
    fg, bg = make_tiny_set(tmp_path / "in", n_fg=2, n_bg=2, fg_hw=(40, 48), bg_hw=(48, 64))
    (tmp_path / "fg.csv").write_text("id,url,license,author,source\nf00,,CC BY-SA 4.0,Ann,https://a.org/f00\n"
                                     "f01.png,,CC0,Bo,https://a.org/f01\n")
    common = ["rssn", "compose", "--fg", str(fg), "--bg", str(bg), "--per-fg", "2", "--denoise-p", "1", "--quiet",
              "--fg-attribution", str(tmp_path / "fg.csv")]
    run_cli(*common, "--out", str(tmp_path / "a"), "--workers", "1", check=True)
    run_cli(*common, "--out", str(tmp_path / "b"), "--workers", "2", "--format", "png", check=True)
    run_cli(*common, "--out", str(tmp_path / "p"), "--workers", "1", "--route", "plain", check=True)
    for name in ("DATASET.md", "dataset.json"):
        a = (tmp_path / "a" / name).read_bytes()
        assert a == (tmp_path / "b" / name).read_bytes()  # other folder, other worker count: same card
        assert a != (tmp_path / "p" / name).read_bytes()  # other route: another card
    run_cli(*common, "--out", str(tmp_path / "a"), "--workers", "1", check=True)  # resume rewrites it, unchanged
    assert (tmp_path / "a" / "DATASET.md").read_bytes() == (tmp_path / "b" / "DATASET.md").read_bytes()
    fa, fp = (json.loads((tmp_path / d / "dataset.json").read_text()) for d in ("a", "p"))
    assert [t["kind"] for t in fa["terms"]].count("bm3d") == 1 and "bm3d" not in [t["kind"] for t in fp["terms"]]
    ops = fa["how"]["operations"]
    comps = _composites(tmp_path / "a")
    assert ops["bm3d on the foreground"]["composites"] == sum(
        any(o["op"] == "bm3d" and o["target"] == "fg" for o in r["ops"]) for r in comps) == 4  # denoise_p 1
    fgl = {r["licence"]: r["images"] for r in fa["where"]["foregrounds"]["licences"]}
    assert fgl == {"cc-by-sa-4.0": 1, "cc0": 1}
    assert "share-alike" in (tmp_path / "a" / "DATASET.md").read_text()
    # shards carry the same records, attribution included
    run_cli(*common, "--out", str(tmp_path / "w"), "--workers", "1", "--format", "webdataset", check=True)
    with tarfile.open(tmp_path / "w" / "shards" / "shard-000000.tar") as tar:
        docs = [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
    assert len(docs) == 4 and {d["fg"]["attribution"]["author"] for d in docs} == {"Ann", "Bo"}
    assert all(d["bg"]["attribution"]["license"] == "unknown" for d in docs)


@pytest.mark.parametrize("text, expected", [
    ("id,url,license\nb00,,cc0\n", "line 1 lacks the column(s) author, source"),
    ("id,url,license,author,source\nb00,,cc0,A,S\nb00,,cc0,A,S\n", "line 3 repeats id b00 of line 2"),
    ("id,url,license,author,source\nb00,,cc0,A,S\nb01,,see: our site!,A,S\n", "line 3 (id b01): licence 'see: our site!' cannot be read"),
    ("id,url,license,author,source\nb00,,cc0,A,S\n,,cc0,A,S\n", "line 3 has no id"),
])
def test_bad_attribution_files_name_the_file_and_line(tmp_path, text, expected):
    p = tmp_path / "attr.csv"
    p.write_text(text)
    with pytest.raises(AttributionError) as exc:
        read_attribution(p)
    assert str(p) in str(exc.value) and expected in str(exc.value)


def test_unknown_ids_stop_compose_with_the_line(tmp_path):
    fg, bg = make_tiny_set(tmp_path / "in", n_fg=1, n_bg=2, fg_hw=(40, 48), bg_hw=(48, 64))
    attr = tmp_path / "bg.csv"
    attr.write_text("id,url,license,author,source\nb00,,cc0,A,S\nb07,,cc0,A,S\n")
    proc = run_cli("rssn", "compose", "--fg", str(fg), "--bg", str(bg), "--out", str(tmp_path / "o"), "--quiet",
                   "--bg-attribution", str(attr))
    assert proc.returncode == 2 and f"{attr}: line 3: id b07 matches no image in --bg" in proc.stderr
    assert not (tmp_path / "o" / "manifest.jsonl").exists()


def test_licence_names_and_terms_follow_bg20k_spellings():
    from rssn.card import licence_name, licence_terms
    from rssn.provenance import licence_key

    assert licence_key("https://creativecommons.org/licenses/by-nc-nd/4.0/") == "cc-by-nc-nd-4.0"
    assert licence_name("cc-by-nc-nd-4.0") == "CC BY-NC-ND 4.0" and licence_name("cc0-1.0") == "CC0 1.0"
    assert licence_name(licence_key("")) == "unknown licence" and licence_name("pdm") == "Public Domain Mark"
    t = licence_terms("cc-by-nc-nd-4.0")
    assert "attribution required" in t and "non-commercial" in t and "no derivatives" in t and "share-alike" not in t
    assert licence_terms("cc0") == "public domain: no conditions"
    assert "share-alike" in licence_terms("cc-by-sa-2.0") and "non-commercial" not in licence_terms("cc-by-sa-2.0")
