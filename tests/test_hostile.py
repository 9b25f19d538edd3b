"""Every command that reads images, run on a generated corpus of awkward and bad files: each
good file is processed, each bad one recorded with a reason naming it, nothing crashes or
hangs, and the exit status follows RELIABILITY.md."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from .badcorpus import write_flat_set, write_photo_set
from .conftest import run_cli
from .helpers import kill_when, make_tiny_set, tree_digest

BAD_REASONS = {
    "zero": "empty file",
    "truncated-jpeg": "cannot decode",
    "truncated-png": "cannot decode",
    "text": "not a readable image",
    "bomb": "decompression bomb",
    "wrongsize": "matte is",
}
BAD_STEMS = ("zero", "truncated-jpeg", "truncated-png", "text", "bomb")


def _manifest(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


def test_rssn_compose_on_the_bad_corpus(tmp_path):
    good, bad = write_photo_set(tmp_path / "fg")
    _, bgs = make_tiny_set(tmp_path / "bgsrc", n_fg=1, n_bg=2)
    write_flat_set(bgs / "awkward")  # awkward and bad backgrounds, and a symlink loop
    out = tmp_path / "out"
    proc = run_cli("rssn", "compose", "--fg", str(tmp_path / "fg"), "--bg", str(bgs), "--out", str(out),
                   "--per-fg", "2", "--denoise-p", "0", "--fg-method", "ml", "--workers", "2", "--quiet", timeout=300)
    assert proc.returncode == 0, proc.stderr
    recs = _manifest(out)
    made = {r["id"] for r in recs if r["type"] == "composite"}
    failures = [r for r in recs if r["type"] == "failure"]
    failed_ids = {r["id"]: r for r in failures if r["scope"] == "composite"}
    for stem in good:  # every slot of a good foreground is made, or failed on a bad background it drew
        for slot in range(2):
            cid = f"{stem}_{slot:03d}"
            assert cid in made or Path(failed_ids[cid]["input"]).stem in BAD_STEMS, cid
    assert len(made) >= len(good)
    for stem in bad:
        mine = [f for f in failures if Path(f["input"]).stem == stem and "/fg/" in f["input"].replace(os.sep, "/")]
        assert mine, stem
        assert all(BAD_REASONS[stem] in f["reason"] for f in mine), (stem, mine)
    for f in failures:  # a bad background fails only the composites that drew it, naming it
        if "/awkward/" in f["input"]:
            assert f["scope"] == "composite" and Path(f["input"]).stem in BAD_STEMS
    for r in recs:
        if r["type"] == "composite" and r["fg"]["stem"] == "exif rotated":
            assert r["fg"]["size"] == [72, 96]  # the displayed orientation


def test_bg20k_build_on_the_bad_corpus(tmp_path):
    src = tmp_path / "src"
    good, bad = write_flat_set(src)
    out = tmp_path / "out"
    proc = run_cli("bg20k", "build", "--src", str(src), "--out", str(out), "--no-screen", "--min-short-side", "64",
                   "--target-short-side", "64", "--dedup-distance", "0", "--workers", "2", "--quiet", timeout=300)
    assert proc.returncode == 0, proc.stderr
    src_recs = {Path(r["source"]).name: r for r in _manifest(out) if r["type"] == "source"}
    assert set(src_recs) == set(good) | set(bad)  # the symlink loop added nothing twice
    for name in good:
        assert src_recs[name]["status"] == "candidate", (name, src_recs[name])
    for name in bad:
        r = src_recs[name]
        assert r["status"] == "failed" and r["stage"] == "decode", (name, r)
    assert "empty file" in src_recs["zero.png"]["reason"] and "decompression bomb" in src_recs["bomb.png"]["reason"]
    kept = [p for d in ("train", "testval") for p in (out / d).glob("*.jpg")]
    assert kept and all(min(cv2.imread(str(p)).shape[:2]) == 64 for p in kept)


def test_gfm_train_predict_eval_on_the_bad_corpus(tmp_path):
    good, bad = write_photo_set(tmp_path / "data")
    run = tmp_path / "run"
    proc = run_cli("gfm", "train", "--data", str(tmp_path / "data"), "--out", str(run), "--pretrained", "none",
                   "--crop", "64", "--batch-size", "4", "--epochs", "1", "--device", "cpu", "--quiet", timeout=300)
    assert proc.returncode == 0, proc.stderr
    for stem in bad:
        assert any(stem in line and "skip" in line for line in proc.stderr.splitlines()), stem
    # truncated files pass the header check and are skipped when decoded, during the epoch
    assert f"{len(good) + 2} training samples" in proc.stderr
    pred = tmp_path / "pred"
    proc = run_cli("gfm", "predict", "--checkpoint", str(run / "last.pt"), "--input", str(tmp_path / "data" / "image"),
                   "--out", str(pred), "--quiet", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert {p.stem for p in pred.glob("*.png")} == set(good) | {"wrongsize"}  # the photo itself is fine
    for stem in ("zero", "text", "bomb"):
        assert any(stem in line and "failed" in line for line in proc.stderr.splitlines()), stem
    # eval: predictions and ground truth with every problem
    for name, data in {"zero.png": b"", "text.png": b"hello"}.items():
        (pred / name).write_bytes(data)
    proc = run_cli("gfm", "eval", "--pred", str(pred), "--gt", str(tmp_path / "data" / "alpha"),
                   "--out-json", str(tmp_path / "e.json"), "--quiet", "--allow-partial", timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "e.json").read_text())
    reasons = {f["name"]: f["reason"] for f in doc["failures"]}
    assert "empty file" in reasons["zero"] and "not a readable image" in reasons["text"]
    assert "wrongsize" in reasons and "prediction is" in reasons["wrongsize"]
    assert doc["count"] == len(good)


def test_output_inside_input_and_unwritable_output_are_refused(tmp_path):
    fg, bg = make_tiny_set(tmp_path / "d", n_fg=1, n_bg=1)
    p = run_cli("bg20k", "build", "--src", str(bg), "--out", str(bg / "out"), "--no-screen")
    assert p.returncode == 2 and "inside the --src" in p.stderr
    p = run_cli("gfm", "train", "--data", str(tmp_path / "d" / "fg"), "--out", str(tmp_path / "d" / "fg" / "run"))
    assert p.returncode == 2
    blocker = tmp_path / "file"
    blocker.write_text("x")
    p = run_cli("rssn", "compose", "--fg", str(fg), "--bg", str(bg), "--out", str(blocker / "out"), "--quiet")
    assert p.returncode == 2 and "cannot write" in p.stderr and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_bg20k_killed_and_resumed_matches_an_uninterrupted_run(tmp_path, seed):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(24):
        cv2.imwrite(str(src / f"p{i:02d}.jpg"), rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    args = ["--src", str(src), "--no-screen", "--min-short-side", "200", "--target-short-side", "200",
            "--workers", "2", "--quiet"]
    run_cli("bg20k", "build", *args, "--out", str(tmp_path / "ref"), check=True)
    out = tmp_path / "killed"
    manifest = out / "manifest.jsonl"
    kill_when(["bg20k", "build", *args, "--out", str(out)], manifest, int(rng.integers(2, 12)), timeout=120)
    run_cli("bg20k", "build", *args, "--out", str(out), check=True)
    skip = ("stats.json", "review.html")
    a = {k: v for k, v in tree_digest(tmp_path / "ref", exclude=skip).items() if not k.startswith("review/")}
    b = {k: v for k, v in tree_digest(out, exclude=skip).items() if not k.startswith("review/")}
    assert a == b
    assert not list(out.rglob(".tmp-*"))
    keys = [json.loads(l)["key"] for l in manifest.read_text().splitlines()]
    assert len(keys) == len(set(keys))
