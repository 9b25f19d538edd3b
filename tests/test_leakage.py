"""Trustworthy training (#29): validation leakage, resume rules, spreads, equal arms, loader workers.
Fast checks; the training runs that exercise them end to end are in test_gfm_train.py and test_experiment.py."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from gfm.leakage import PHASH_MAX_DISTANCE, find_overlap, fingerprint

from .conftest import run_cli, shared


def _dist(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def test_perceptual_hash_separates_copies_from_other_photos(tmp_path):
    """Resized (96-300 px high) and JPEG q75 copies of 8 alphamatting photos stay within the
    threshold; every pair of different photos among the 20 is at least 3x the threshold apart
    (measured: copies <= 2 bits, different photos >= 22)."""
    photos = sorted(shared("alphamatting").glob("image/GT*.png"))
    hashes = [fingerprint(p).phash for p in photos]
    closest = min(_dist(a, b) for i, a in enumerate(hashes) for b in hashes[:i])
    assert closest > 3 * PHASH_MAX_DISTANCE, closest
    for p, h in list(zip(photos, hashes))[::3]:
        img = cv2.imread(str(p))
        for height in (96, 300):
            w = round(img.shape[1] * height / img.shape[0])
            cv2.imwrite(str(tmp_path / "c.png"), cv2.resize(img, (w, height), interpolation=cv2.INTER_AREA))
            assert _dist(fingerprint(tmp_path / "c.png").phash, h) <= PHASH_MAX_DISTANCE, (p.name, height)
        cv2.imwrite(str(tmp_path / "c.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 75])
        assert _dist(fingerprint(tmp_path / "c.jpg").phash, h) <= PHASH_MAX_DISTANCE, p.name


def test_overlap_names_renamed_and_resized_copies_and_nothing_else(tmp_path):
    am = shared("alphamatting") / "image"
    train, val = tmp_path / "train", tmp_path / "val"
    train.mkdir()
    val.mkdir()
    for n in ("GT01", "GT05", "GT12"):
        shutil.copy(am / f"{n}.png", train / f"{n}.png")
    shutil.copy(am / "GT05.png", val / "renamed.png")  # the same bytes under another name
    img = cv2.imread(str(am / "GT12.png"))
    cv2.imwrite(str(val / "small.jpg"), cv2.resize(img, (200, 150), interpolation=cv2.INTER_AREA))
    shutil.copy(am / "GT02.png", val / "GT02.png")  # a different photo
    got = find_overlap(sorted(val.iterdir()), sorted(train.iterdir()))
    assert [(Path(o["val"]).name, Path(o["train"]).name, o["how"].split(" (")[0]) for o in got] == [
        ("renamed.png", "GT05.png", "same bytes"), ("small.jpg", "GT12.png", "same picture")]


def _photo_set(root: Path, names: tuple[str, ...]) -> Path:
    from .test_gfm_train import small_real_set

    return small_real_set(root, height=64, names=names)


def test_train_and_experiment_refuse_a_validation_photo_that_is_a_training_photo(tmp_path):
    data = _photo_set(tmp_path / "data", ("GT01", "GT05"))
    val = _photo_set(tmp_path / "val", ("GT05", "GT02"))
    p = run_cli("gfm", "train", "--data", str(data), "--val", str(val), "--out", str(tmp_path / "run"),
                "--pretrained", "none", "--crop", "64", "--device", "cpu", "--quiet")
    assert p.returncode != 0 and f"{val}/image/GT05.png = {data}/image/GT05.png" in p.stderr, p.stderr
    assert "--allow-val-overlap" in p.stderr and not (tmp_path / "run" / "last.pt").exists()
    bg = tmp_path / "bg"
    bg.mkdir()
    cv2.imwrite(str(bg / "b.jpg"), np.full((96, 96, 3), 90, np.uint8))
    p = run_cli("gfm", "experiment", "--fg", str(data), "--bg", str(bg), "--val", str(val), "--out",
                str(tmp_path / "exp"), "--arms", "plain", "--pretrained", "none", "--crop", "64", "--device", "cpu",
                "--workers", "1", "--quiet")
    assert p.returncode != 0 and "GT05.png" in p.stderr and "--allow-val-overlap" in p.stderr, p.stderr
    assert not (tmp_path / "exp" / "arms").exists()  # refused before any work


def test_spread_is_the_sample_standard_deviation_and_the_table_shows_n(tmp_path):
    from gfm.experiment import ArmResult, ExperimentConfig, table, write_results

    results = [ArmResult("rssn", r, w, {"sad": v, "mse": v / 1000}) for r, v in enumerate((10.0, 12.0, 14.0))
               for w in ("last", "best")]
    row = table(results, "last", ["rssn"])[0]
    assert row["sad"] == 12.0 and row["sad_std"] == pytest.approx(2.0)  # population std would be 1.63
    cfg = ExperimentConfig(fg=tmp_path, bg=tmp_path, val=tmp_path, out=tmp_path, arms=(("rssn", ()),), repeats=3)
    write_results(cfg, results, overlap=[{"val": "v/a.png", "train": "f/a.png", "how": "same bytes"}],
                  unequal=["steps: plain/r0 4, rssn/r0 3"])
    md = (tmp_path / "results.md").read_text()
    assert "| arm | n | SAD |" in md and "| rssn | 3 | 12.00 ± 2.00 |" in md and "ddof=1" in md
    assert "v/a.png = f/a.png (same bytes)" in md and "steps: plain/r0 4, rssn/r0 3" in md


def test_unequal_arms_are_named():
    from gfm.experiment import unequal_arms

    same = {"samples": 6, "epochs": 2, "steps": 4, "scored": 2}
    assert unequal_arms({"plain/r0": same, "rssn/r0": dict(same)}) == []
    assert unequal_arms({"plain/r0": same, "rssn/r0": {**same, "samples": 5, "steps": 3},
                         "old/r0": {**same, "samples": None}}) == [
        "samples: plain/r0 6, rssn/r0 5",  # an unknown count (a run from before the record) is not compared
        "steps: old/r0 4, plain/r0 4, rssn/r0 3"]


def test_resume_refuses_another_batch_lr_world_or_validation_set():
    from gfm.train import TrainConfig, check_resume_settings

    cfg = TrainConfig(data=("d",), out="o", batch_size=32, lr=1e-5, val="v")
    ckpt = {"config": json.dumps({"batch_size": 32, "lr": 1e-5, "val": "v"}), "world_size": 2,
            "val_fingerprint": "abc"}
    check_resume_settings("last.pt", ckpt, cfg, 2, "abc")  # the same settings: accepted
    for change, world, fp, named in (({"batch_size": 4}, 2, "abc", "--batch-size 32 in the checkpoint, 4 now"),
                                     ({"lr": 1e-4}, 2, "abc", "--lr 1e-05 in the checkpoint, 0.0001 now"),
                                     ({}, 1, "abc", "2 process(es) in the checkpoint, 1 now"),
                                     ({}, 2, "xyz", "--val v in the checkpoint"),
                                     ({"val": None}, 2, None, "no --val now")):
        with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)")):
            check_resume_settings("last.pt", ckpt, TrainConfig(**{**cfg.__dict__, **change}), world, fp)


def test_default_loader_workers_are_the_cores_per_process_capped_at_8(monkeypatch):
    import os

    from gfm.train import default_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert default_workers(1) == 8 and default_workers(16) == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert default_workers(1) == 2 and default_workers(4) == 1  # never 0 by default: one process decodes
