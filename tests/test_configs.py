"""Every command's configuration validates itself when built (#22): a Python caller (or `gfm
experiment`, which builds TrainConfig) gets the sentence the CLI gives, naming the field."""
from __future__ import annotations

from pathlib import Path

import pytest

from bg20k.build import BuildConfig
from gfm.evaluate import EvalConfig
from gfm.train import TrainConfig
from rssn.audit import AuditConfig


@pytest.mark.parametrize("change,message", [
    ({"epochs": 0}, "TrainConfig: epochs 0: must be an integer >= 1"),
    ({"crop": 100}, "TrainConfig: crop 100: must be a multiple of 32"),
    ({"crop": 32}, "TrainConfig: crop 32: must be an integer >= 64"),
    ({"lr": 0.0}, "TrainConfig: lr 0.0: must be a finite number > 0"),
    ({"lr": float("nan")}, "TrainConfig: lr nan"),
    ({"batch_size": 0}, "TrainConfig: batch-size 0: must be an integer >= 1"),
    ({"batch_size": True}, "TrainConfig: batch-size True"),
    ({"workers": -1}, "TrainConfig: workers -1: must be an integer >= 0"),
    ({"laplacian": "fancy"}, "TrainConfig: laplacian 'fancy': choose one of textbook, authors"),
    ({"backbone": "r50"}, "r50"),
    ({"data": ()}, "TrainConfig: give data"),
])
def test_train_config_refuses_bad_values(change, message):
    base = {"data": ("d",), "out": "o"}
    TrainConfig(**base)  # the defaults are valid
    with pytest.raises(ValueError) as e:
        TrainConfig(**{**base, **change})
    assert message in str(e.value)


@pytest.mark.parametrize("change,message", [
    ({"quality": 101}, "BuildConfig: quality 101: must be an integer >= 1 and <= 100"),
    ({"dedup_distance": 40}, "BuildConfig: dedup-distance 40"),
    ({"val_fraction": 1.5}, "BuildConfig: val-fraction 1.5: must be a finite number >= 0.0 and <= 1.0"),
    ({"timeout": 0}, "BuildConfig: timeout 0: must be a finite number > 0.0"),
    ({"hash": "md5"}, "BuildConfig: hash 'md5': choose one of phash, dhash, whash, ahash"),
    ({"chroma": "411"}, "BuildConfig: chroma '411'"),
    ({"max_per_host": 0}, "BuildConfig: max-per-host 0"),
    ({"executor": "dask"}, "BuildConfig: executor 'dask'"),
])
def test_build_config_refuses_bad_values(change, message):
    BuildConfig(out_dir=Path("o"))
    with pytest.raises(ValueError) as e:
        BuildConfig(out_dir=Path("o"), **change)
    assert message in str(e.value)


@pytest.mark.parametrize("change,message", [
    ({"protocol": "matlab"}, "EvalConfig: protocol 'matlab': choose one of dim, gfm"),
    ({"trimap_kernel": 0}, "EvalConfig: trimap-kernel 0"),
    ({"pred_dir": None}, "EvalConfig: give pred_dir and gt_dir"),
])
def test_eval_config_refuses_bad_values(change, message):
    base = {"pred_dir": Path("p"), "gt_dir": Path("g")}
    EvalConfig(**base)
    with pytest.raises(ValueError) as e:
        EvalConfig(**{**base, **change})
    assert message in str(e.value)


@pytest.mark.parametrize("change,message", [
    ({"sets": ()}, "AuditConfig: give at least one"),
    ({"sets": (("a", Path("x")), ("a", Path("y")))}, "AuditConfig: set names must differ"),
    ({"reference": "real"}, "AuditConfig: reference 'real' is not one of the sets (comp)"),
    ({"conf": 2.0}, "AuditConfig: conf 2.0"),
    ({"limit": 0}, "AuditConfig: limit 0: must be an integer >= 1"),
    ({"erode": -1}, "AuditConfig: erode -1"),
])
def test_audit_config_refuses_bad_values(change, message):
    base = {"sets": (("comp", Path("c")),), "out_dir": Path("o")}
    AuditConfig(**base)
    with pytest.raises(ValueError) as e:
        AuditConfig(**{**base, **change})
    assert message in str(e.value)
