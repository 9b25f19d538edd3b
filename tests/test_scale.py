"""Scale-out: torchrun (DDP, gloo on CPU), webdataset shards, and the Ray executor."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from .test_gfm_train import small_real_set


@pytest.mark.slow
def test_torchrun_two_ranks_hold_the_same_weights_and_write_one_checkpoint(tmp_path):
    """Also: the ranks validate one model (rank 0's BatchNorm statistics are broadcast first, as
    gloo runs have no SyncBatchNorm), and the logged epoch losses are the mean over the ranks."""
    data = small_real_set(tmp_path / "data", height=96)
    val = small_real_set(tmp_path / "val", height=64, names=("GT02", "GT03", "GT04"))
    torchrun = Path(sys.executable).parent / "torchrun"
    gfm = Path(sys.executable).parent / "gfm"
    out = tmp_path / "run"
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", str(gfm), "train", "--data", str(data),
                           "--out", str(out), "--pretrained", "none", "--crop", "64", "--batch-size", "1",
                           "--epochs", "2", "--lr", "1e-3", "--device", "cpu", "--quiet",
                           "--digest-log", str(tmp_path / "digest"), "--val", str(val), "--workers", "0"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = (tmp_path / "digest.rank0").read_text().splitlines()
    r1 = (tmp_path / "digest.rank1").read_text().splitlines()
    # 3 photos over 2 ranks, padded to 4: 2 steps an epoch, 2 epochs
    assert len(r0) == len(r1) == 4 and r0 == r1
    assert len({line.split()[1] for line in r0}) == 4  # the weights changed at every step
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".pt") == ["best.pt", "last.pt"]
    assert not list(out.glob(".tmp-*"))
    assert "effective batch 2" in proc.stderr
    hist = json.loads((out / "history.json").read_text())
    assert len(hist) == 2
    # the validation SAD of the two ranks' shares is the SAD of rank 0's model (last.pt) on every
    # photo. Bound 1e-6: float32 convolutions on other thread counts and sums in another order
    # differ in the last bits; rank 1's own BatchNorm statistics (one other batch, momentum 0.1)
    # move the SAD by percent
    import torch

    from gfm.checkpoint import load_model
    from gfm.data import find_samples
    from gfm.train import evaluate

    got = evaluate(load_model(out / "last.pt"), find_samples(val)[0], torch.device("cpu"))
    assert hist[-1]["val_sad"] == pytest.approx(got["sad"] / got["n"], rel=1e-6)
    # rank 0 logs its own steps; the epoch's loss in history.json is the mean of both ranks'
    rows = [r.split(",") for r in (out / "losses.csv").read_text().splitlines()[1:]]
    rank0 = [float(r[2]) for r in rows if r[0] == "1"]
    assert len(rank0) == 2 and hist[-1]["loss"] != pytest.approx(np.mean(rank0), rel=1e-6)


def test_webdataset_shards_are_written_and_train_one_step(tmp_path):
    import tarfile

    from .conftest import run_cli
    from .helpers import make_tiny_set

    fg, bg = make_tiny_set(tmp_path / "src", n_fg=3, n_bg=2, fg_hw=(96, 96), bg_hw=(120, 120))
    out = tmp_path / "comp"
    run_cli("rssn", "compose", "--fg", str(fg), "--bg", str(bg), "--out", str(out), "--per-fg", "2", "--denoise-p", "0",
            "--format", "webdataset", "--shard-size", "4", "--workers", "2", "--quiet", check=True)
    shards = sorted((out / "shards").glob("*.tar"))
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar"]
    with tarfile.open(shards[0]) as tar:
        names = tar.getnames()
        rec = json.loads(tar.extractfile("f00_000.json").read())
        assert tar.extractfile("f00_000.alpha.png").read() == (out / "alpha" / "f00_000.png").read_bytes()
    assert names[:5] == ["f00_000.image.png", "f00_000.alpha.png", "f00_000.fg.png", "f00_000.bg.png", "f00_000.json"]
    assert len(names) == 4 * 5 and rec["id"] == "f00_000"
    first = [p.read_bytes() for p in shards]
    run_cli("rssn", "compose", "--fg", str(fg), "--bg", str(bg), "--out", str(out), "--per-fg", "2", "--denoise-p", "0",
            "--format", "webdataset", "--shard-size", "4", "--quiet", check=True)
    assert [p.read_bytes() for p in shards] == first  # same composites, same shard bytes
    proc = run_cli("gfm", "train", "--data", str(out / "shards"), "--out", str(tmp_path / "run"), "--pretrained", "none",
                   "--crop", "64", "--batch-size", "6", "--epochs", "1", "--device", "cpu", "--quiet")
    assert proc.returncode == 0, proc.stderr
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert "6 training samples" in proc.stderr and hist[0]["comp"] > 0  # fg and bg came from the shards


@pytest.mark.slow
def test_ray_executor_gives_the_same_files_and_manifests(tmp_path):
    pytest.importorskip("ray", reason="Ray is installed by the test extra: pip install -e '.[test]'")
    from .conftest import run_cli
    from .helpers import make_tiny_set, tree_digest

    fg, bg = make_tiny_set(tmp_path / "src", n_fg=3, n_bg=3)
    args = ["--per-fg", "2", "--denoise-p", "0", "--blur-kernels", "3,5", "--quiet",
            "--workers", "2", "--cache", str(tmp_path / "cache")]
    run_cli("rssn", "compose", "--fg", str(fg), "--bg", str(bg), "--out", str(tmp_path / "local"), *args, check=True)
    proc = run_cli("rssn", "compose", "--fg", str(fg), "--bg", str(bg), "--out", str(tmp_path / "ray"), *args,
                   "--executor", "ray", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = tree_digest(tmp_path / "local"), tree_digest(tmp_path / "ray")
    assert len([k for k in a if k.startswith("image/")]) == 6 and a == b  # manifest.jsonl included

    src = tmp_path / "bgsrc"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        cv2.imwrite(str(src / f"p{i}.jpg"), rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    bargs = ["--src", str(src), "--min-short-side", "200", "--target-short-side", "200", "--detector", "yolov8n.yaml",
             "--workers", "2", "--quiet"]
    run_cli("bg20k", "build", *bargs, "--out", str(tmp_path / "bg-local"), check=True)
    proc = run_cli("bg20k", "build", *bargs, "--out", str(tmp_path / "bg-ray"), "--executor", "ray", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    skip = ("stats.json", "review.html")
    a = tree_digest(tmp_path / "bg-local", exclude=skip)
    b = tree_digest(tmp_path / "bg-ray", exclude=skip)
    assert a == b and any(k.startswith("train/") for k in a)


def _worker_env() -> tuple[str | None, int]:
    import os

    return os.environ.get("OMP_NUM_THREADS"), os.getpid()


def test_local_executor_workers_are_single_threaded_in_every_batch():
    """One pool serves a run's stages; every worker it starts, in any batch, gets one BLAS /
    OpenMP thread (two workers each with all cores' threads would oversubscribe the machine)."""
    import os

    from rssn.executor import Executor

    before = os.environ.get("OMP_NUM_THREADS")
    with Executor(2) as ex:
        first = [r for _, r, e in ex.run(_worker_env, [()] * 4)]
        second = [r for _, r, e in ex.run(_worker_env, [()] * 4)]
    assert {t for t, _ in first + second} == {"1"}
    assert len({p for _, p in first + second}) <= 2  # one pool of two workers, not one per batch
    assert os.environ.get("OMP_NUM_THREADS") == before  # the parent's environment is restored


def _reduce_on_rank(rank: int, world: int, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from gfm.train import _mean_over_ranks

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    got = _mean_over_ranks({"loss": float(rank + 1), "train_replaced": 2 * rank + 1}, torch.device("cpu"))
    Path(f"{out}.{rank}").write_text(json.dumps(got))
    dist.destroy_process_group()


@pytest.mark.slow
def test_epoch_counts_are_summed_over_ranks_and_losses_averaged(tmp_path):
    """Two gloo ranks: losses 1 and 2 average to 1.5; replaced counts 1 and 3 add up to 4."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_reduce_on_rank, args=(2, port, str(tmp_path / "r")), nprocs=2)
    for rank in range(2):
        assert json.loads((tmp_path / f"r.{rank}").read_text()) == {"loss": 1.5, "train_replaced": 4}
