"""One layout detector (rssn.layout): what `rssn compose`, `rssn audit` and `gfm train` each make of
a data folder. Pairing looks only at names, so the files are empty."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from gfm.data import find_samples
from rssn.audit import find_set
from rssn.layout import FOLDER_KINDS, LayoutError, detect_layout, find_foregrounds


def _files(root: Path, *names: str) -> Path:
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(b"")
    return root


def _compose_output(root: Path, stems=("a", "b")) -> Path:
    return _files(root, *(f"{d}/{s}.png" for d in ("image", "alpha", "fg", "bg") for s in stems))


def _shard(path: Path, *members: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for m in members:
            tar.addfile(tarfile.TarInfo(m), io.BytesIO(b""))


def test_each_kind_is_recognised_in_one_place(tmp_path):
    _shard(tmp_path / "flat" / "s.tar", "k.image.png", "k.alpha.png")
    _shard(tmp_path / "nested" / "shards" / "s.tar", "k.image.png", "k.alpha.png")
    cases = {
        "flat": "shards", "nested": "shards",
        "comp": "compose", "photo": "photo", "orig": "photo", "given": "fg", "rgba": "rgba",
    }
    _compose_output(tmp_path / "comp")
    _files(tmp_path / "photo", "image/a.png", "alpha/a.png")
    _files(tmp_path / "orig", "original/a.png", "mask/a.png")
    _files(tmp_path / "given", "fg/a.png", "alpha/a.png")
    _files(tmp_path / "rgba", "a.png")
    got = {name: detect_layout(tmp_path / name, kinds=FOLDER_KINDS).kind for name in cases}
    assert got == cases
    comp = detect_layout(tmp_path / "comp", kinds=FOLDER_KINDS)
    assert (comp.image, comp.matte, comp.fg, comp.bg) == tuple(tmp_path / "comp" / d for d in ("image", "alpha", "fg", "bg"))
    assert detect_layout(tmp_path / "flat", kinds=FOLDER_KINDS).shards == (tmp_path / "flat" / "s.tar",)
    # without shards and compose among the kinds (`rssn compose --fg`), a tar is no layout and
    # image/ alpha/ fg/ bg/ fits two layouts: refused, naming the choice
    assert detect_layout(tmp_path / "flat").kind == "rgba"
    with pytest.raises(LayoutError, match="ambiguous layout.*--layout photo"):
        detect_layout(tmp_path / "comp")
    assert detect_layout(tmp_path / "comp", prefer="photo").kind == "photo"


def test_training_data_audit_and_compose_read_a_compose_output_each_their_way(tmp_path):
    comp = _compose_output(tmp_path / "comp")
    samples, failures = find_samples(comp)
    assert failures == [] and [(s.name, s.fg, s.bg) for s in samples] == [
        (s, comp / "fg" / f"{s}.png", comp / "bg" / f"{s}.png") for s in ("a", "b")]
    # the audit without a manifest: photos (image/ + alpha/), fg/ and bg/ beside them ignored
    info = find_set("c", comp)
    assert info.kind == "photos" and [(i.image, i.matte) for i in info.items] == [
        (str(comp / "image" / f"{s}.png"), str(comp / "alpha" / f"{s}.png")) for s in ("a", "b")]
    with pytest.raises(LayoutError, match="ambiguous layout"):
        find_foregrounds(comp)
    # image/ alpha/ fg/ without bg/: photos for training and the audit
    part = _files(tmp_path / "part", "image/a.png", "alpha/a.png", "fg/a.png")
    assert [(s.name, s.fg) for s in find_samples(part)[0]] == [("a", None)]
    assert find_set("p", part).kind == "photos"


def test_training_data_refuses_a_foreground_only_folder_naming_compose_output(tmp_path):
    given = _files(tmp_path / "given", "fg/a.png", "alpha/a.png")
    with pytest.raises(LayoutError, match=r"--layout photo needs .*; or give `rssn compose` output \(image/ alpha/ fg/ bg/\)$"):
        find_samples(given)
    with pytest.raises(LayoutError, match=r"does not exist; or give `rssn compose` output"):
        find_samples(tmp_path / "nothing")
    # the audit and compose read it as given foregrounds
    assert [f.kind for f in find_foregrounds(given)[0]] == ["fg"]
    assert [i.name for i in find_set("g", given).items] == ["a"]


def test_shard_samples_without_a_matte_are_failures(tmp_path):
    _shard(tmp_path / "s" / "shards" / "shard-0.tar", "k1.image.png", "k1.alpha.png", "k2.image.png")
    samples, failures = find_samples(tmp_path / "s")
    assert [s.name for s in samples] == ["k1"]
    assert failures == [(f"{tmp_path / 's' / 'shards'}/k2", "shard sample without alpha")]


def test_duplicate_stems_in_a_compose_output_are_failures_not_dropped(tmp_path):
    """A second file with a stem another file of its folder has is named with the reason, as
    `rssn compose` does for its inputs; the first (in name order) is paired."""
    comp = _compose_output(tmp_path / "comp")
    _files(comp, "image/a.jpg", "bg/b.jpg")
    samples, failures = find_samples(comp)
    assert [(s.name, s.image, s.bg) for s in samples] == [("a", comp / "image" / "a.jpg", comp / "bg" / "a.png"),
                                                          ("b", comp / "image" / "b.png", comp / "bg" / "b.jpg")]
    assert sorted(Path(p).relative_to(comp).as_posix() for p, _ in failures) == ["bg/b.png", "image/a.png"]
    assert all("same stem" in reason for _, reason in failures)
    # a stem without its other files is a failure too
    (comp / "fg" / "b.png").unlink()
    _, failures = find_samples(comp)
    assert (str(comp / "image" / "b.png"), "no fg file with stem 'b'") in failures
