"""Foreground planes (rssn.planes): on-the-fly composites read each foreground's decoded planes
from the cache and give exactly the tensors of decoding it for every sample."""
from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from gfm.data import OnTheFlyDataset
from rssn.compose import ComposeConfig
from rssn.layout import find_foregrounds
from rssn.planes import PlaneForeground, open_foreground, planes_root

from .helpers import make_tiny_set


def _sets(root: Path) -> tuple[Path, Path]:
    # 150 x 200: every crop is 150 px, placed anywhere along the width
    return make_tiny_set(root, n_fg=3, n_bg=2, fg_hw=(150, 200), bg_hw=(180, 240))


def _dataset(fg: Path, bg: Path, cache: Path, denoise_p: float, planes: bool = True) -> OnTheFlyDataset:
    ds = OnTheFlyDataset(fg, bg, "rim", 64, seed=1, per_fg=2,
                         compose_options={"denoise_p": denoise_p, "cache_dir": cache, "fg_method": "cf"})
    ds.plane_cache = planes
    return ds


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("denoise_p", [0.0, 1.0])
def test_plane_cached_samples_equal_decoding_every_sample(tmp_path, monkeypatch, denoise_p):
    """Two epochs: the plane-cached dataset (planes written in epoch 0, mapped after), a second
    one opened on the same planes, and a dataset that decodes every foreground for every sample
    with its own empty cache give equal tensors and ops, BM3D drawn for every composite or for
    none. After epoch 0 the planes are complete: a decode would fail the test."""
    import rssn.planes

    fg, bg = _sets(tmp_path)
    cached = _dataset(fg, bg, tmp_path / "cache", denoise_p)
    plain = _dataset(fg, bg, tmp_path / "cache-plain", denoise_p, planes=False)
    for epoch in range(2):
        if epoch == 1:
            def no_decode(*a, **k):
                raise AssertionError("a foreground was decoded although its planes are cached")

            monkeypatch.setattr(rssn.planes, "ForegroundState", no_decode)
            monkeypatch.setattr(rssn.planes, "read_background", no_decode)
        cached.set_epoch(epoch)
        plain.set_epoch(epoch)
        again = _dataset(fg, bg, tmp_path / "cache", denoise_p)
        again.set_epoch(epoch)
        for index in range(len(cached)):
            fi, k = divmod(index, 2)
            wa, wb = cached.composite_window(fi, k), plain.composite_window(fi, k)
            assert wa.ops == wb.ops
            assert sum(o["op"] == "bm3d" for o in wa.ops) == (2 if denoise_p == 1.0 else 0)  # fg and bg
            a, b = cached[index], plain[index]
            assert _equal(a, b), (epoch, index)
            assert _equal(again[index], b), (epoch, index)
    root = planes_root(cached.compose_cfg)
    entries = sorted(p.parent for p in root.glob("fg/*/*/meta.json"))
    assert len(entries) == 3
    assert all((e / "fg8-bm3d.npy").exists() == (denoise_p == 1.0) for e in entries)
    bgs = [json.loads(p.read_text()) for p in root.glob("bg/*/*/meta.json")]
    assert len(bgs) == 2 and all(b["denoised"] == (denoise_p == 1.0) for b in bgs)
    assert not list(root.rglob(".tmp-*"))
    assert not (tmp_path / "cache-plain" / "planes").exists()


@pytest.mark.parametrize("fault", ["no room", "write fails"])
def test_without_room_or_when_a_write_fails_samples_are_decoded_with_the_same_tensors(tmp_path, monkeypatch,
                                                                                       caplog, fault):
    """The planes are a speed-up, never a condition: a disk that would keep less than
    MIN_FREE_BYTES, or a write that fails (a full disk: ENOSPC), leaves no complete entry and
    serves the tensors of decoding every sample; the reason is logged once per process."""
    import errno

    import rssn.planes

    monkeypatch.setattr(rssn.planes, "_warned", set())
    if fault == "no room":
        monkeypatch.setattr(rssn.planes, "MIN_FREE_BYTES", 1 << 62)
    else:
        def full(path, arr):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr(rssn.planes, "_save", full)
    fg, bg = _sets(tmp_path)
    cached = _dataset(fg, bg, tmp_path / "cache", 1.0)
    plain = _dataset(fg, bg, tmp_path / "cache-plain", 1.0, planes=False)
    with caplog.at_level(logging.WARNING, logger="rssn.planes"):
        for index in range(len(cached)):
            assert _equal(cached[index], plain[index]), index
    assert not list(planes_root(cached.compose_cfg).rglob("meta.json"))
    warned = [r.getMessage() for r in caplog.records if r.name == "rssn.planes"]
    assert len(warned) == 1, warned
    assert ("GiB free" in warned[0]) if fault == "no room" else ("No space left on device" in warned[0])
    assert "decoding files for every sample instead" in warned[0]


def test_a_changed_foreground_file_gets_new_planes(tmp_path):
    """The same name with new content (the photo mirrored): the next sample composes the new
    photo, exactly as decoding it does, and differs from the old sample."""
    fg, bg = _sets(tmp_path)
    ds = _dataset(fg, bg, tmp_path / "cache", 0.0)
    old = ds[0]
    path = fg / "image" / "f00.png"
    cv2.imwrite(str(path), cv2.flip(cv2.imread(str(path)), 1))
    new = ds[0]
    want = _dataset(fg, bg, tmp_path / "cache-plain", 0.0, planes=False)[0]
    assert _equal(new, want) and not torch.equal(new["image"], old["image"])
    assert len(list(planes_root(ds.compose_cfg).glob("fg/*/*/meta.json"))) == 2


def test_a_changed_background_file_gets_new_planes(tmp_path):
    """Every background rewritten with new content under its name: the next sample composes
    the new pixels, exactly as decoding them does."""
    fg, bg = _sets(tmp_path)
    ds = _dataset(fg, bg, tmp_path / "cache", 0.0)
    old = ds[0]
    for path in bg.iterdir():
        cv2.imwrite(str(path), 255 - cv2.imread(str(path)))
    new = ds[0]
    want = _dataset(fg, bg, tmp_path / "cache-plain", 0.0, planes=False)[0]
    assert _equal(new, want) and not torch.equal(new["bg"], old["bg"])


@pytest.mark.parametrize("built_before", [False, True])
def test_a_cut_off_foreground_is_named_counted_and_replaced(tmp_path, caplog, built_before):
    """A photo cut off after the set was listed, before or after its planes were built: the
    sample is logged with its name, counted, and the next foreground's composite serves in its
    place (the same tensors as that one); no planes are written for the cut file."""
    fg, bg = _sets(tmp_path)
    ds = _dataset(fg, bg, tmp_path / "cache", 0.0)
    want = _dataset(fg, bg, tmp_path / "cache-plain", 0.0, planes=False)[2]  # foreground 1, k = 0
    if built_before:
        ds[0]
    path = fg / "image" / "f00.png"
    path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="gfm.data"):
        got = ds[0]
    assert ds.replaced == 1 and "f00" in caplog.text
    assert int(got.pop("replaced")) == 1 and int(want.pop("replaced")) == 0  # the count travels with the sample
    assert _equal(got, want)
    assert len(list(planes_root(ds.compose_cfg).glob("fg/*/*/meta.json"))) == 1 + built_before


def test_processes_building_one_entry_at_once_write_the_same_planes(tmp_path):
    """Eight builders of one foreground's entry at once (threads; each file is renamed into
    place): every one maps equal planes, the entry is complete and no temporary file is left;
    its files' bytes equal those of an entry built alone."""
    fg, _ = make_tiny_set(tmp_path / "src", n_fg=1, n_bg=1, fg_hw=(150, 200))
    item = find_foregrounds(fg)[0][0]
    cfg = ComposeConfig(fg_dir=fg, bg_dir=fg, out_dir=tmp_path, cache_dir=tmp_path / "cache")
    with ThreadPoolExecutor(8) as ex:
        states = list(ex.map(lambda _: open_foreground(item, cfg), range(8)))
    assert all(isinstance(s, PlaneForeground) for s in states)
    for s in states[1:]:
        assert np.array_equal(s.fg8, states[0].fg8) and np.array_equal(s.matte.values, states[0].matte.values)
    alone = open_foreground(item, cfg, root=tmp_path / "alone")
    for f in ("matte.npy", "fg8.npy", "transitions.npy", "meta.json"):
        assert (states[0].folder / f).read_bytes() == (alone.folder / f).read_bytes()
    assert not list(planes_root(cfg).rglob(".tmp-*"))
    values = np.asarray(alone.matte.values)
    assert np.array_equal(alone.transitions, np.flatnonzero((values > 0) & (values < 255)))


def test_a_cut_off_background_is_reported_and_the_sample_replaced(tmp_path, caplog):
    """A background cut off after its planes were built: decoding it fails again (its key
    changed), the sample is counted and replaced as when every sample decodes."""
    fg, bg = _sets(tmp_path)
    ds = _dataset(fg, bg, tmp_path / "cache", 0.0)
    plain = _dataset(fg, bg, tmp_path / "cache-plain", 0.0, planes=False)
    ds[0]
    for path in bg.iterdir():
        path.write_bytes(path.read_bytes()[:200])
    with caplog.at_level(logging.WARNING, logger="gfm.data"):
        with pytest.raises(RuntimeError, match="no foreground could be composited"):
            ds[0]
        with pytest.raises(RuntimeError, match="no foreground could be composited"):
            plain[0]
    assert ds.replaced == plain.replaced == 3 and "f00" in caplog.text
