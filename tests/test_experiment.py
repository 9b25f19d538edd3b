"""`gfm experiment` at a tiny scale: the table, the arms differing only in their route, resume."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import cv2
import pytest
import torch

from .conftest import run_cli, shared

TRAIN, VAL = ("GT01", "GT05", "GT12"), ("GT02", "GT03")


def _photos(root: Path, names: tuple[str, ...]) -> Path:
    from .test_gfm_train import small_real_set

    return small_real_set(root, height=96, names=names)


def _backgrounds(root: Path) -> Path:
    root.mkdir(parents=True)
    for p in sorted(shared("backgrounds").glob("*.jpg"))[:3]:
        img = cv2.imread(str(p))
        cv2.imwrite(str(root / p.name), cv2.resize(img, (240, 160), interpolation=cv2.INTER_AREA))
    return root


def _args(fg: Path, bg: Path, val: Path, out: Path) -> list[str]:
    return ["gfm", "experiment", "--fg", str(fg), "--bg", str(bg), "--val", str(val), "--out", str(out),
            "--arms", "plain,noise", "--per-fg", "1", "--epochs", "2", "--max-steps-per-epoch", "1", "--crop", "64",
            "--batch-size", "3", "--pretrained", "none", "--device", "cpu", "--workers", "1", "--quiet"]


def kill_on_log(args: list[str], log: Path, text: str, timeout: float = 600) -> str:
    """Run one of our commands in its own session with stderr in ``log``; SIGKILL its process
    group as soon as a line holding ``text`` is logged. Returns the log."""
    import os
    import signal
    import subprocess
    import sys
    import time

    with open(log, "wb") as err:
        proc = subprocess.Popen([str(Path(sys.executable).parent / args[0]), *args[1:]], start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None and text.encode() not in log.read_bytes():
            time.sleep(0.005)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return log.read_text()


@pytest.mark.slow
def test_experiment_table_arms_and_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # every run below (and the killed one) on the same threads
    fg, val = _photos(tmp_path / "fg", TRAIN), _photos(tmp_path / "val", VAL)
    bg = _backgrounds(tmp_path / "bg")
    ref = tmp_path / "ref"
    p = run_cli(*_args(fg, bg, val, ref))
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader((ref / "results.csv").open()))
    assert [(r["arm"], r["checkpoint"]) for r in rows] == [("plain", "last"), ("noise", "last"),
                                                           ("plain", "best"), ("noise", "best")]
    for r in rows:
        for m in ("sad", "mse", "mad", "grad", "conn", "sad_tran", "sad_fg", "sad_bg"):
            assert float(r[m]) >= 0
        assert 0 <= float(r["mse"]) <= 1
    md = (ref / "results.md").read_text()
    assert "| arm | n | SAD | MSE | MAD | Grad | Conn | SAD-TRAN | SAD-FG | SAD-BG |" in md and "| noise | 1 |" in md
    for arm in ("plain", "noise"):  # each arm links the dataset card of the set it trained on
        assert f"- {arm}/r0: [arms/{arm}/r0/comp/DATASET.md](arms/{arm}/r0/comp/DATASET.md)" in md
        assert (ref / "arms" / arm / "r0" / "comp" / "DATASET.md").is_file()
    assert (ref / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((ref / "experiment.json").read_text())
    a, b = doc["compose_settings"]["plain"], doc["compose_settings"]["noise"]
    assert {k for k in a if a[k] != b[k]} <= {"route", "denoise_p", "blur_p", "noise_p"}
    assert a["route"] == "plain" and b["noise_p"] == 0.5 and b["blur_p"] == 0 and b["denoise_p"] == 0
    configs = [json.loads(torch.load(ref / "arms" / arm / "r0" / "run" / "last.pt", weights_only=True)["config"])
               for arm in ("plain", "noise")]
    differ = {k for k in configs[0] if configs[0][k] != configs[1][k]}
    assert differ == {"data", "out"}  # the same model, seed, schedule and samples; only the data
    assert doc["versions"]["torch"] == torch.__version__ and "timings_s" in doc

    # the arms trained on, stepped and were scored on the same amounts, and say so
    assert doc["counts"] == {f"{a}/r0": {"samples": 3, "epochs": 2, "steps": 2, "scored": 2} for a in ("plain", "noise")}
    assert doc["unequal"] == [] and doc["val_overlap"] == []

    # killed in the second arm's second epoch (its first is logged after its checkpoint), then the
    # same command: the same numbers
    out = tmp_path / "killed"
    text = kill_on_log(_args(fg, bg, val, out), tmp_path / "killed.log", "[noise r0] epoch 1:")
    assert "[noise r0] epoch 1:" in text and "[noise r0] epoch 2:" not in text
    run = out / "arms" / "noise" / "r0" / "run"
    assert len(json.loads((run / "history.json").read_text())) == 1, "the kill did not land mid-training"
    assert not (out / "results.csv").exists()
    p = run_cli(*_args(fg, bg, val, out))
    assert p.returncode == 0, p.stderr
    assert (out / "results.csv").read_text() == (ref / "results.csv").read_text()
    # a re-run of a finished experiment does nothing new and keeps the numbers
    p = run_cli(*_args(fg, bg, val, out))
    assert p.returncode == 0 and (out / "results.csv").read_text() == (ref / "results.csv").read_text()
    # an arm scored on fewer photos: no table, unless --allow-unequal
    ev = out / "arms" / "noise" / "r0" / "eval-last.json"
    ev.write_text(json.dumps({**json.loads(ev.read_text()), "count": 1}))
    p = run_cli(*_args(fg, bg, val, out))
    assert p.returncode != 0 and "scored: noise/r0 1, plain/r0 2" in p.stderr and "--allow-unequal" in p.stderr
    p = run_cli(*_args(fg, bg, val, out), "--allow-unequal")
    assert p.returncode == 0 and "**Unequal arms (--allow-unequal):** scored: noise/r0 1" in (out / "results.md").read_text()


@pytest.mark.parametrize("options,message", [
    ("--denoise-p 7", "denoise-p 7.0: a probability must lie in"),
    ("--route foo", "route 'foo': choose one of rssn, plain"),
    ("--blur-kernels 0,-5", "blur-kernels (0, -5): must be one or more positive"),
    ("--noise-sigma -3", "noise-sigma -3.0: must be a finite number >= 0"),
    ("--noise-sigma nan", "noise-sigma nan"),
    ("--fg-method magic", "fg-method 'magic': choose one of cf, cf-full, ml, none"),
    ("--denoise-profile x", "denoise-profile 'x': choose one of"),
    ("--denoise-sigma 0", "denoise-sigma 0.0: must be a finite number > 0"),
    ("--bg /nonexistent/coco", "--bg /nonexistent/coco: no such folder"),
])
def test_arm_options_are_validated_as_rssn_compose_validates_them(options, message):
    """`gfm experiment --arm` once let any value through (a route other than plain ran as RSSN,
    p = 7 meant always): every value is now checked by the same rule as `rssn compose`."""
    from gfm.experiment import parse_arm

    with pytest.raises(ValueError, match=re.escape(message)) as exc:
        parse_arm(f"x={options}")
    assert str(exc.value).startswith("--arm x: ")
    assert parse_arm("x=--route plain --denoise-p 1 --blur-kernels 3,5")[1] == {
        "route": "plain", "denoise_p": 1.0, "blur_kernels": (3, 5)}


def test_compose_config_validates_itself(tmp_path):
    from rssn.compose import ComposeConfig

    base = {"fg_dir": tmp_path, "bg_dir": tmp_path, "out_dir": tmp_path / "o"}
    ComposeConfig(**base)  # the defaults are valid
    for bad in ({"noise_p": 1.5}, {"route": "magic"}, {"blur_kernels": ()}, {"png_level": 10}, {"per_fg": 0},
                {"executor": "dask"}, {"image_format": "gif"}, {"blur_kernels": (20, 2.5)}):
        with pytest.raises(ValueError, match=next(iter(bad)).replace("_", "-")):
            ComposeConfig(**base, **bad)


def test_experiment_cli_refuses_a_bad_arm_before_any_work(tmp_path):
    for d in ("fg", "bg", "val"):
        (tmp_path / d).mkdir()
    r = run_cli("gfm", "experiment", "--fg", str(tmp_path / "fg"), "--bg", str(tmp_path / "bg"), "--val",
                str(tmp_path / "val"), "--out", str(tmp_path / "out"), "--arms", "plain", "--arm", "x=--denoise-p 7")
    assert r.returncode == 2 and "--arm x: --denoise-p 7.0" in r.stderr
    assert not (tmp_path / "out").exists()
