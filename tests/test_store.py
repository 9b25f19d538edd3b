"""`gfm pack` stores: the same tensors as the folder path, refusal of cut-off stores, resume,
corrupt samples skipped, one copy of a shared foreground, and the float batch made on the device."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from gfm.data import MattingDataset, check_samples, collate, find_samples, model_input, to_device
from gfm.store import COMPLETE, HEADER, PIXELS, RECORDS, StoreDataset, StoreError, TrainingStore, pack

from .conftest import run_cli, shared

PHOTOS = ("GT01", "GT05", "GT12")


def real_photos(root: Path, names: tuple[str, ...] = PHOTOS, scale: float = 1.0) -> Path:
    """Alphamatting photos and mattes (optionally scaled), copied into ``root`` for one test."""
    am = shared("alphamatting")
    for d in ("image", "alpha"):
        (root / d).mkdir(parents=True)
    for n in names:
        img = cv2.imread(str(am / "image" / f"{n}.png"))
        a = cv2.imread(str(am / "alpha" / f"{n}.png"), cv2.IMREAD_GRAYSCALE)
        if scale != 1.0:
            img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            a = cv2.resize(a, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(root / "image" / f"{n}.png"), img)
        cv2.imwrite(str(root / "alpha" / f"{n}.png"), a)
    return root


def folder_dataset(data: Path, rosta: str, crop: int, seed: int, cache: Path | None) -> MattingDataset:
    samples, _ = find_samples(data)
    samples, _ = check_samples(samples)
    return MattingDataset(samples, rosta, crop, seed, photo_fgbg_cache=cache)


@pytest.mark.parametrize("rosta", ["tt", "rim"])
def test_store_gives_every_tensor_of_the_folder_path_on_real_photos(tmp_path, rosta):
    """Full-size alphamatting photos (crops of 640 and the whole short side, centred and not,
    flipped and not, over four epochs): every key of every sample is torch.equal, dtypes too;
    photos carry their closed-form F and B through the store as through the folder's cache."""
    data = real_photos(tmp_path / "data", scale=0.5)
    cache = tmp_path / "cache"
    run_cli("gfm", "pack", "--data", str(data), "--out", str(tmp_path / "store"), "--cache", str(cache),
            "--workers", "1", "--quiet", check=True)
    folder = folder_dataset(data, rosta, 64, 7, cache)
    store = StoreDataset([tmp_path / "store"], rosta, 64, 7)
    assert store.names == folder.names == sorted(PHOTOS)
    seen_keys = set()
    for epoch in range(4):
        folder.set_epoch(epoch)
        store.set_epoch(epoch)
        for i in range(len(folder)):
            a, b = folder[i], store[i]
            assert a.keys() == b.keys()
            seen_keys |= set(a)
            for k in a:
                assert a[k].dtype == b[k].dtype, k
                assert torch.equal(a[k], b[k]), f"{k} of {folder.names[i]} in epoch {epoch}"
            assert bool(b["has_fgbg"]) and b["fg"].any()
    want = {"image", "alpha", "fg", "bg", "has_fgbg", "replaced"}  # replaced: 0 for both, compared above
    want |= {f"{t}{s}" for t in ("glance", "transition", "focus") for s in (("_tt", "_ft", "_bt") if rosta == "rim" else ("",))}
    assert seen_keys == want


def test_cut_off_or_other_version_store_is_refused_with_the_rebuild_command(tmp_path):
    data = real_photos(tmp_path / "data", names=("GT01",), scale=0.25)
    out = tmp_path / "store"
    pack([str(data)], out, photo_fgbg=False, log=lambda m: None)
    TrainingStore(out)  # complete: opens
    (out / COMPLETE).rename(tmp_path / "complete.json")
    with pytest.raises(StoreError, match=r"cut off.*gfm pack --data \S+data --out \S+store --no-photo-fgbg"):
        TrainingStore(out)
    (tmp_path / "complete.json").rename(out / COMPLETE)
    header = json.loads((out / HEADER).read_text())
    (out / HEADER).write_text(json.dumps({**header, "version": 0}))
    with pytest.raises(StoreError, match=r"version 0.*rebuild it with `gfm pack .*--overwrite`"):
        TrainingStore(out)
    proc = run_cli("gfm", "train", "--data", str(out), "--out", str(tmp_path / "run"), "--pretrained", "none",
                   "--device", "cpu", "--quiet")
    assert proc.returncode == 1 and "rebuild it with" in proc.stderr


def test_killed_pack_resumes_to_the_same_bytes_and_corrupt_samples_are_skipped_by_name(tmp_path):
    data = real_photos(tmp_path / "data", scale=0.25)
    (data / "image" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    shutil.copy(data / "alpha" / "GT01.png", data / "alpha" / "broken.png")
    whole = tmp_path / "whole"
    pack([str(data)], whole, photo_fgbg=False, log=lambda m: None)
    records = [json.loads(l) for l in (whole / RECORDS).read_text().splitlines()]
    assert [r["name"] for r in records if r["key"].startswith("sample:")] == sorted(PHOTOS)
    assert any("broken" in r["key"] for r in records if r["key"].startswith("failure:"))
    # a pack killed after two samples, in the middle of writing the third one's planes
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    (cut / COMPLETE).unlink()
    recs = (cut / RECORDS).read_text().splitlines()
    kept = [l for l in recs if '"GT12"' not in l]
    (cut / RECORDS).write_text("\n".join(kept) + "\n" + '{"key": "sample:GT1')  # a torn last line too
    with open(cut / PIXELS, "r+b") as f:
        f.truncate(max(e[0] + e[1] for l in kept if '"extents"' in l for e in json.loads(l)["extents"]) + 5000)
    with pytest.raises(StoreError, match="cut off"):
        TrainingStore(cut)
    pack([str(data)], cut, photo_fgbg=False, log=lambda m: None)
    assert (cut / PIXELS).read_bytes() == (whole / PIXELS).read_bytes()
    assert len(TrainingStore(cut).records) == 3


def test_composites_of_one_foreground_store_its_matte_and_foreground_once(tmp_path):
    """Three composites share a foreground and matte: the store holds them once, and the
    per-composite planes (image, background) three times; the tensors still match."""
    rng = np.random.default_rng(0)
    h, w = 90, 120
    alpha = np.clip(cv2.GaussianBlur((rng.random((h, w)) > 0.5).astype(np.float32), (15, 15), 4) * 3 - 1, 0, 1)
    a8 = np.rint(alpha * 255).astype(np.uint8)
    fg = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    root = tmp_path / "comp"
    for d in ("image", "alpha", "fg", "bg"):
        (root / d).mkdir(parents=True)
    for k in range(3):
        bg = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img = np.rint(alpha[..., None] * fg + (1 - alpha[..., None]) * bg).astype(np.uint8)
        for d, a in (("image", img), ("alpha", a8), ("fg", fg), ("bg", bg)):
            cv2.imwrite(str(root / d / f"c{k}.png"), a)
    pack([str(root)], tmp_path / "store", log=lambda m: None)
    store = TrainingStore(tmp_path / "store")
    planes = [r["planes"] for r in store.records]
    assert len({p["fg"] for p in planes}) == len({p["alpha"] for p in planes}) == 1
    assert len({p["image"] for p in planes}) == len({p["bg"] for p in planes}) == 3
    image_bytes = h * w * 3
    per = lambda n: -(-n // 4096) * 4096  # noqa: E731 - each plane starts on a page
    trans_bytes = 4 * planes[0]["trans"][1]
    # 3 images + 3 backgrounds + 1 foreground, 1 matte + 1 target plane, 1 transition list
    assert (tmp_path / "store" / PIXELS).stat().st_size <= 7 * per(image_bytes) + 2 * per(h * w) + per(trans_bytes)
    folder = folder_dataset(root, "bt", 64, 3, None)
    sd = StoreDataset([store], "bt", 64, 3)
    for i in range(3):
        a, b = folder[i], sd[i]
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_device_batch_is_the_float_batch_of_before(tmp_path):
    """to_device on an integer batch gives what the dataset used to return in float: the
    normalised image of model_input, the raw image, F and B in [0, 1], int64 classes."""
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    a8 = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    a16 = (a8.astype(np.uint16) * 257)
    s8 = {"image": torch.from_numpy(img.transpose(2, 0, 1).copy()), "alpha": torch.from_numpy(a8)[None],
          "glance": torch.from_numpy((a8 > 128).astype(np.uint8)), "transition": torch.from_numpy((a8 > 9).astype(np.uint8))[None],
          "fg": torch.from_numpy(img.transpose(2, 0, 1).copy()), "bg": torch.zeros(3, 32, 32, dtype=torch.uint8),
          "has_fgbg": torch.tensor(True)}
    s16 = {**s8, "alpha": torch.from_numpy(a16)[None]}
    batch = collate([s8, s16])
    assert batch["image"].dtype == torch.uint8 and batch["alpha"].dtype == torch.int32
    out = to_device(batch, "cpu")
    assert torch.allclose(out["image"][0], model_input(img), atol=1e-6, rtol=0)  # float32 rounding of two formulas
    assert torch.equal(out["image_raw"][0], torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32) / 255))
    # an 8-bit matte and its 16-bit twin give the same float alpha (v/255 == 257v/65535 in float32)
    assert torch.equal(out["alpha"][0], out["alpha"][1])
    assert torch.equal(out["alpha"][0, 0], torch.from_numpy(a8.astype(np.float32) / 255))
    assert out["glance"].dtype == torch.int64 and out["transition"].dtype == torch.float32


def test_readme_python_api_runs_as_shown(tmp_path, monkeypatch):
    """The README's API block, run verbatim on a store packed from real photos: it prints the
    sample count and names, and the batch it makes is float on the device."""
    import contextlib
    import io
    import re

    text = (Path(__file__).parent.parent / "README.md").read_text()
    block = re.search(r"### Python API.*?```python\n(.*?)```", text, re.S).group(1)
    data = real_photos(tmp_path / "data", scale=0.25)
    monkeypatch.chdir(tmp_path)
    pack([str(data)], tmp_path / "train.store", photo_fgbg=False, log=lambda m: None)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert lines[0] == f"3 {sorted(PHOTOS)}"
    assert lines[1] == "torch.Size([2, 3, 320, 320]) torch.float32"
    # a folder opens with the same interface and the same names
    from gfm.data import open_training_set

    assert open_training_set(data, crop=64).names == sorted(PHOTOS)


@pytest.mark.slow
def test_training_on_the_store_equals_training_on_the_folder_and_logs_loader_time(tmp_path):
    """Same seed: the store run's losses equal the folder run's, step by step (same batches,
    same weights on CPU); losses.csv has the data and compute seconds of every step, and each
    epoch prints its share of time waiting for data."""
    import csv

    data = real_photos(tmp_path / "data", scale=0.25)
    run_cli("gfm", "pack", "--data", str(data), "--out", str(tmp_path / "store"), "--no-photo-fgbg", "--quiet",
            "--workers", "1", check=True)
    rows = {}
    for name, src in (("folder", data), ("store", tmp_path / "store")):
        proc = run_cli("gfm", "train", "--data", str(src), "--out", str(tmp_path / f"run-{name}"), "--pretrained", "none",
                       "--crop", "64", "--batch-size", "3", "--epochs", "2", "--no-photo-fgbg", "--quiet",
                       "--device", "cpu", env={"OMP_NUM_THREADS": "1"}, check=True)
        assert len(re.findall(r"epoch \d: loss [\d.]+, waiting for data \d+% of [\d.]+ s", proc.stderr)) == 2
        with open(tmp_path / f"run-{name}" / "losses.csv", newline="") as f:
            rows[name] = list(csv.DictReader(f))
    assert len(rows["store"]) == 2
    for a, b in zip(rows["folder"], rows["store"]):
        assert [a[k] for k in ("loss", "ce", "fusion_alpha")] == [b[k] for k in ("loss", "ce", "fusion_alpha")]
        assert float(b["data_s"]) >= 0 and float(b["compute_s"]) > 0


def test_rssn_compose_format_store_writes_a_store_with_one_foreground_copy_per_foreground(tmp_path):
    """`rssn compose --format store` packs its composites into OUT/store: K composites of a
    foreground share one matte and foreground plane (no BM3D: the same pixels), and the store
    gives the folder's tensors."""
    from .helpers import make_tiny_set

    fg, bg = make_tiny_set(tmp_path / "in", n_fg=2, n_bg=3)
    out = tmp_path / "comp"
    run_cli("rssn", "compose", "--fg", str(fg), "--bg", str(bg), "--out", str(out), "--per-fg", "3",
            "--fg-method", "none", "--denoise-p", "0", "--workers", "1", "--quiet", "--format", "store",
            "--cache", str(tmp_path / "cache"), check=True)
    store = TrainingStore(out / "store")
    assert len(store.records) == 6
    assert len({r["planes"]["fg"] for r in store.records}) == len({r["planes"]["alpha"] for r in store.records}) == 2
    folder = folder_dataset(out, "ft", 64, 1, None)
    sd = StoreDataset([store], "ft", 64, 1)
    assert sd.names == folder.names
    for i in range(len(sd)):
        a, b = folder[i], sd[i]
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_shards_pack_on_worker_processes_to_the_folder_tensors(tmp_path):
    """Webdataset shards packed on two worker processes (the rssn executor): planes arrive in
    any order, the store still gives the shards' tensors in the shards' order."""
    from .helpers import make_tiny_set

    fg, bg = make_tiny_set(tmp_path / "in", n_fg=2, n_bg=2)
    out = tmp_path / "comp"
    run_cli("rssn", "compose", "--fg", str(fg), "--bg", str(bg), "--out", str(out), "--per-fg", "2",
            "--fg-method", "none", "--denoise-p", "0", "--workers", "1", "--quiet", "--format", "webdataset",
            "--cache", str(tmp_path / "cache"), check=True)
    summary = pack([str(out / "shards")], tmp_path / "store", workers=2, log=lambda m: None)
    assert summary.samples == 4 and summary.source_bytes > 0
    folder = folder_dataset(out / "shards", "tt", 64, 2, None)
    sd = StoreDataset([tmp_path / "store"], "tt", 64, 2)
    assert sd.names == folder.names
    for e in range(2):
        folder.set_epoch(e)
        sd.set_epoch(e)
        for i in range(len(sd)):
            a, b = folder[i], sd[i]
            assert all(torch.equal(a[k], b[k]) for k in a)
