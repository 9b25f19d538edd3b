"""`gfm experiment`: the paper's COMP-Track and RSSN ablation (Tables 1 and 4) on the user's data.

For each arm (a set of `rssn compose` options) and each repeat r:

compose (EXP/arms/ARM/rR/comp, seed + r)  ->  train (EXP/arms/ARM/rR/run, the same model,
schedule, seed + r and number of samples for every arm)  ->  evaluate the last and the best
(by validation SAD) checkpoint on the real photos with the GFM protocol (eval-last.json,
eval-best.json)  ->  results (EXP/results.csv, results.md, results.png, experiment.json).

Every stage resumes: compose skips finished composites, training continues from last.pt, and
an evaluation already written is kept, so a killed experiment continues where it stopped and
ends with the same numbers. The arms differ only in their route: every other setting is shared.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from rssn.imageio import atomic_write_bytes, atomic_write_json

from .dist import distributed_context

# Table 4's arms: the RSSN route with one step at a time, and the plain blend
DEFAULT_ARMS: dict[str, dict[str, Any]] = {
    "plain": {"route": "plain"},
    "blur": {"denoise_p": 0.0, "blur_p": 0.5, "noise_p": 0.0},
    "denoise": {"denoise_p": 0.5, "blur_p": 0.0, "noise_p": 0.0},
    "noise": {"denoise_p": 0.0, "blur_p": 0.0, "noise_p": 0.5},
    "rssn": {},
}
ORI_ARM = "ori"  # trains on the foreground photos themselves (the ORI-Track)

# `rssn compose` options an arm may set: option -> (ComposeConfig field, parser)
ARM_OPTIONS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "--route": ("route", str), "--denoise-p": ("denoise_p", float), "--blur-p": ("blur_p", float),
    "--noise-p": ("noise_p", float), "--noise-sigma": ("noise_sigma", float), "--fg-method": ("fg_method", str),
    "--denoise-profile": ("denoise_profile", str), "--denoise-sigma": ("denoise_sigma", float),
    "--blur-kernels": ("blur_kernels", lambda v: tuple(int(k) for k in v.split(","))), "--bg": ("bg_dir", Path),
}
METRICS = ("sad", "mse", "mad", "grad", "conn", "sad_tran", "sad_fg", "sad_bg")


def parse_arm(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME=OPTIONS`` (e.g. ``coco=--route plain --bg coco/``) -> (name, ComposeConfig overrides)."""
    if "=" not in text:
        raise ValueError(f"--arm {text!r}: expected NAME=OPTIONS, e.g. coco='--route plain --bg coco/'")
    name, opts = text.split("=", 1)
    name = name.strip()
    if not name or not name.replace("-", "").replace("_", "").isalnum() or name == ORI_ARM:
        raise ValueError(f"--arm {text!r}: the name must be letters, digits, - or _ (and not {ORI_ARM!r})")
    words = shlex.split(opts)
    out: dict[str, Any] = {}
    i = 0
    while i < len(words):
        opt = words[i]
        if opt not in ARM_OPTIONS or i + 1 >= len(words):
            raise ValueError(f"--arm {name}: {opt!r} is not one of {', '.join(ARM_OPTIONS)} with a value")
        key, parse = ARM_OPTIONS[opt]
        try:
            out[key] = parse(words[i + 1])
        except ValueError:
            raise ValueError(f"--arm {name}: {opt} {words[i + 1]!r} is not a valid value") from None
        i += 2
    from rssn.compose import check_compose_settings

    try:  # the same validation as `rssn compose` and ComposeConfig: a bad value never runs silently
        check_compose_settings(out)
    except ValueError as exc:
        raise ValueError(f"--arm {name}: --{exc}") from None
    if "bg_dir" in out and not out["bg_dir"].is_dir():
        raise ValueError(f"--arm {name}: --bg {out['bg_dir']}: no such folder")
    return name, out


@dataclass(frozen=True)
class ExperimentConfig:
    fg: Path
    bg: Path
    val: Path
    out: Path
    arms: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]  # (name, overrides); ORI_ARM for photos
    repeats: int = 1
    per_fg: int = 5
    seed: int = 0
    compose_workers: int = 1
    cache_dir: Path | None = None
    denoise_profile: str | None = None
    # training, identical for every arm
    backbone: str = "r34"
    rosta: str = "tt"
    pretrained: str = "none"
    crop: int = 320
    batch_size: int | None = 4  # None: gfm train's default for the device
    epochs: int = 10
    lr: float = 1e-5
    max_steps_per_epoch: int | None = None
    device: str = "auto"
    loader_workers: int | None = 0  # gfm train --workers for every arm; None: its default
    laplacian: str = "textbook"
    allow_val_overlap: bool = False  # validate on training photos anyway (recorded in results.md)
    allow_unequal: bool = False  # write the table even when arms trained or scored different amounts


@dataclass
class ArmResult:
    arm: str
    repeat: int
    which: str  # last | best
    means: dict[str, float] = field(default_factory=dict)
    epoch: int = 0


def compose_config(cfg: ExperimentConfig, overrides: dict[str, Any], out: Path, seed: int):
    from rssn.compose import ComposeConfig

    base: dict[str, Any] = {"fg_dir": cfg.fg, "bg_dir": cfg.bg, "out_dir": out, "per_fg": cfg.per_fg, "seed": seed,
                            "workers": cfg.compose_workers, "cache_dir": cfg.cache_dir}
    if cfg.denoise_profile:
        base["denoise_profile"] = cfg.denoise_profile
    return ComposeConfig(**{**base, **overrides})


def train_config(cfg: ExperimentConfig, data: tuple[str, ...], out: Path, seed: int):
    from .train import TrainConfig

    return TrainConfig(data=data, out=str(out), backbone=cfg.backbone, rosta=cfg.rosta, pretrained=cfg.pretrained,
                       crop=cfg.crop, batch_size=cfg.batch_size, epochs=cfg.epochs, lr=cfg.lr, seed=seed,
                       workers=cfg.loader_workers, device=cfg.device, val=str(cfg.val),
                       max_steps_per_epoch=cfg.max_steps_per_epoch, resume="auto",
                       cache_dir=str(cfg.cache_dir) if cfg.cache_dir else None, laplacian=cfg.laplacian,
                       allow_val_overlap=cfg.allow_val_overlap)


def _stage(cfg: ExperimentConfig, arm: str, repeat: int) -> Path:
    return cfg.out / "arms" / arm / f"r{repeat}"


def evaluate_checkpoint(ckpt: Path, val: Path, pred_dir: Path, device) -> dict[str, Any]:
    """Predict the validation photos with ``ckpt`` and score them with the GFM protocol."""
    from .checkpoint import load_model
    from .data import find_samples
    from .evaluate import EvalConfig, run_eval
    from .predict import run_predict
    from .train import check_val_files

    pairs = check_val_files(val, find_samples(val)[0])
    model = load_model(ckpt, device)
    run_predict(model, [image for image, _ in pairs], pred_dir, device, progress=False)
    result = run_eval(EvalConfig(pred_dir, pairs[0][1].parent, protocol="gfm"), progress=False)
    return {"checkpoint": str(ckpt), "count": len(result.rows), "means": result.means(),
            "failures": result.failures}


def val_overlap(cfg: ExperimentConfig) -> list[dict[str, str]]:
    """The validation photos that are also training foregrounds (an error unless allowed)."""
    from rssn.layout import find_foregrounds

    from .data import find_samples
    from .leakage import find_overlap, overlap_message
    from .train import check_val_files

    val, _ = find_samples(cfg.val)
    check_val_files(cfg.val, val)
    items, _ = find_foregrounds(cfg.fg)
    overlap = find_overlap([s.image for s in val], [i.image for i in items], cfg.loader_workers or None)
    if overlap and not cfg.allow_val_overlap:
        raise ValueError(f"--val {cfg.val}: {overlap_message(overlap)}")
    return overlap


def _run_token() -> str:
    """Names this launch (torchrun's run id), so that a marker left by an earlier launch is not taken for done."""
    return os.environ.get("TORCHELASTIC_RUN_ID", "") + "\n"


def _mark(path: Path) -> None:
    atomic_write_bytes(path, _run_token().encode())


def _wait_for(path: Path) -> None:
    """Under torchrun: the other ranks wait until rank 0 marks ``path`` in this launch."""
    while not (path.exists() and path.read_text() == _run_token()):
        time.sleep(1.0)


def arm_counts(stage: Path) -> dict[str, Any]:
    """What one arm/repeat trained on and was scored on: samples per epoch, steps, photos scored."""
    run = stage / "run"
    hist = json.loads((run / "history.json").read_text()) if (run / "history.json").exists() else []
    doc = json.loads((stage / "eval-last.json").read_text()) if (stage / "eval-last.json").exists() else {}
    steps = int(hist[-1]["step"]) if hist and "step" in hist[-1] else None
    if steps is None and (run / "last.pt").exists():
        from .checkpoint import load_checkpoint

        steps = int(load_checkpoint(run / "last.pt")["step"])
    return {"samples": hist[-1].get("samples") if hist else None, "epochs": len(hist), "steps": steps,
            "scored": doc.get("count")}


def unequal_arms(counts: dict[str, dict[str, Any]]) -> list[str]:
    """One line per count that differs between arms/repeats (unknown counts are not compared)."""
    out = []
    for key in ("samples", "epochs", "steps", "scored"):
        known = {k: c[key] for k, c in counts.items() if c.get(key) is not None}
        if len(set(known.values())) > 1:
            out.append(f"{key}: " + ", ".join(f"{k} {v}" for k, v in sorted(known.items())))
    return out


def run_experiment(cfg: ExperimentConfig, log=print, progress: bool = False) -> list[ArmResult]:
    """Run (or continue) every arm and repeat, then write the results."""

    from rssn.compose import byte_settings, run_compose
    from rssn.outdir import check_settings, output_lock

    from .checkpoint import load_checkpoint
    from .train import pick_device, run_train

    t_start = time.perf_counter()
    rank = distributed_context().rank
    cfg.out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    device = pick_device(cfg.device)
    results: list[ArmResult] = []
    arms = dict(cfg.arms)
    overlap = val_overlap(cfg)  # before any work
    if overlap and rank == 0:
        log(f"warning (--allow-val-overlap): {len(overlap)} validation photo(s) are training foregrounds")
    counts: dict[str, dict[str, Any]] = {}
    for arm, overrides in cfg.arms:
        for r in range(cfg.repeats):
            stage = _stage(cfg, arm, r)
            seed = cfg.seed + r
            t = time.perf_counter()
            if arm == ORI_ARM:  # the photos themselves, each K times: the same number of samples
                data = tuple([str(cfg.fg)] * cfg.per_fg)
            else:
                comp = stage / "comp"
                data = (str(comp),)
                if rank == 0:
                    ccfg = compose_config(cfg, dict(overrides), comp, seed)
                    with output_lock(comp, "rssn compose"):
                        check_settings(comp, "rssn compose", byte_settings(ccfg), may_grow=("per_fg",))
                        summary = run_compose(ccfg, progress=progress)
                    _mark(stage / "compose.done")
                    log(f"[{arm} r{r}] composed: {summary.made} new, {summary.skipped_existing} already there, "
                        f"{summary.failed_composites} failed")
                else:  # under torchrun the other ranks wait for rank 0's composites
                    _wait_for(stage / "compose.done")
            timings[f"{arm}/r{r}/compose"] = round(time.perf_counter() - t, 2)
            t = time.perf_counter()
            run = stage / "run"
            hist = run / "history.json"
            done = hist.exists() and len(json.loads(hist.read_text())) >= cfg.epochs
            if not done:
                lock = output_lock(run, "gfm train") if rank == 0 else contextlib.nullcontext()
                with lock:
                    run_train(train_config(cfg, data, run, seed), progress=progress, log=lambda m, arm=arm, r=r: log(f"[{arm} r{r}] {m}"))
            timings[f"{arm}/r{r}/train"] = round(time.perf_counter() - t, 2)
            if rank != 0:  # rank 0 alone evaluates; the others wait, so that they do not enter the
                _wait_for(stage / "evaluated")  # next arm's rendezvous while rank 0 still evaluates this one
                continue
            t = time.perf_counter()
            for which in ("last", "best"):
                ckpt = run / f"{which}.pt"
                path = stage / f"eval-{which}.json"
                if not path.exists():
                    doc = evaluate_checkpoint(ckpt, cfg.val, stage / f"pred-{which}", device)
                    doc["epoch"] = int(load_checkpoint(ckpt)["epoch"])
                    atomic_write_json(path, doc)
                doc = json.loads(path.read_text())
                results.append(ArmResult(arm, r, which, doc["means"], doc["epoch"]))
            counts[f"{arm}/r{r}"] = arm_counts(stage)
            _mark(stage / "evaluated")
            timings[f"{arm}/r{r}/evaluate"] = round(time.perf_counter() - t, 2)
            log(f"[{arm} r{r}] last: SAD {results[-2].means.get('sad', float('nan')):.2f}, "
                f"best (epoch {results[-1].epoch}): SAD {results[-1].means.get('sad', float('nan')):.2f}")
    if rank != 0:
        return results
    record = experiment_record(cfg, arms, device, timings, time.perf_counter() - t_start)
    record["counts"] = counts
    record["val_overlap"] = overlap
    unequal = unequal_arms(counts)
    record["unequal"] = unequal
    atomic_write_json(cfg.out / "experiment.json", record)
    if unequal and not cfg.allow_unequal:
        raise ValueError(f"{cfg.out}: the arms did not train or score the same amounts ({'; '.join(unequal)}), so "
                         "their table would not compare like with like; see experiment.json, find out why (the "
                         "logs name failed composites), or pass --allow-unequal to write the table anyway")
    write_results(cfg, results, overlap, unequal)
    return results


def experiment_record(cfg: ExperimentConfig, arms: dict[str, Any], device, timings: dict[str, float],
                      seconds: float) -> dict[str, Any]:
    """All settings, the compose settings of every arm, versions, device and timings."""
    import platform

    import torch

    from rssn.compose import byte_settings

    composes = {}
    for arm, overrides in arms.items():
        if arm != ORI_ARM:
            composes[arm] = byte_settings(compose_config(cfg, dict(overrides), Path("comp"), cfg.seed))
    try:
        from importlib.metadata import version

        toolkit = version("gfm-toolkit")
    except Exception:
        toolkit = "unknown"
    return {
        "settings": {k: v for k, v in asdict(cfg).items() if k != "arms"},
        "arms": {a: dict(o) for a, o in arms.items()},
        "compose_settings": composes,
        "dataset_cards": dataset_cards(cfg),
        "versions": {"gfm-toolkit": toolkit, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})",
        "timings_s": timings,
        "seconds": round(seconds, 2),
    }


def table(results: list[ArmResult], which: str, arms: list[str]) -> list[dict[str, Any]]:
    """One row per arm: the mean of each metric over the repeats and, with several, the sample
    standard deviation (ddof=1: with 3 repeats the population one understates it by 18 %)."""
    rows = []
    for arm in arms:
        rs = [r for r in results if r.arm == arm and r.which == which]
        row: dict[str, Any] = {"arm": arm, "checkpoint": which, "repeats": len(rs)}
        for m in METRICS:
            vals = [r.means[m] for r in rs if m in r.means]
            row[m] = float(np.mean(vals)) if vals else float("nan")
            row[f"{m}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        rows.append(row)
    return rows


def write_results(cfg: ExperimentConfig, results: list[ArmResult], overlap: list[dict[str, str]] | None = None,
                  unequal: list[str] | None = None) -> None:
    """results.csv (every arm, last and best), results.md (the paper's layout), results.png."""
    import csv
    import io

    arms = [a for a, _ in cfg.arms]
    rows = table(results, "last", arms) + table(results, "best", arms)
    buf = io.StringIO()
    fields = ["arm", "checkpoint", "repeats", *[c for m in METRICS for c in (m, f"{m}_std")]]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_bytes(cfg.out / "results.csv", buf.getvalue().encode())

    heads = ["SAD", "MSE", "MAD", "Grad", "Conn", "SAD-TRAN", "SAD-FG", "SAD-BG"]
    lines = [f"# GFM experiment: {cfg.backbone}/{cfg.rosta}, {cfg.epochs} epochs, {cfg.repeats} repeat(s)", ""]
    for which in ("last", "best"):
        label = "last epoch" if which == "last" else "best epoch by validation SAD"
        lines += [f"## {label}", "", "| arm | n | " + " | ".join(heads) + " |", "|---" * (len(heads) + 2) + "|"]
        for row in (r for r in rows if r["checkpoint"] == which):
            cells = []
            for m in METRICS:
                v = row[m]
                s = f"{v:.4f}" if m == "mse" else f"{v:.2f}"
                if row["repeats"] > 1:
                    s += f" ± {row[f'{m}_std']:.4f}" if m == "mse" else f" ± {row[f'{m}_std']:.2f}"
                cells.append(s)
            lines.append(f"| {row['arm']} | {row['repeats']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("SAD, Grad, Conn, SAD-TRAN, SAD-FG, SAD-BG in thousands; lower is better. n: repeats (seeds); "
                 "with n > 1 each cell is the mean ± the sample standard deviation (ddof=1) over them.")
    if overlap:
        head = (f"**Validation overlap (--allow-val-overlap):** {len(overlap)} validation photo(s) are training "
                "foregrounds, so these scores partly measure memory:")
        lines += ["", head, ""]
        lines += [f"- {o['val']} = {o['train']} ({o['how']})" for o in overlap]
    if unequal:
        lines += ["", "**Unequal arms (--allow-unequal):** " + "; ".join(unequal)]
    cards = dataset_cards(cfg)
    if cards:  # what each arm trained on, and under which terms (rssn.card)
        lines += ["", "## Data", ""] + [f"- {k}: [{v}]({v})" for k, v in cards.items()]
    atomic_write_bytes(cfg.out / "results.md", ("\n".join(lines) + "\n").encode())
    _plot(cfg.out / "results.png", table(results, "last", arms), heads)


def dataset_cards(cfg: ExperimentConfig) -> dict[str, str]:
    """ARM/rR -> the dataset card of the set it composed, relative to the experiment folder."""
    out = {}
    for arm, _ in cfg.arms:
        for r in range(cfg.repeats):
            card = _stage(cfg, arm, r) / "comp" / "DATASET.md"
            if arm != ORI_ARM and card.exists():
                out[f"{arm}/r{r}"] = card.relative_to(cfg.out).as_posix()
    return out


def _plot(path: Path, rows: list[dict[str, Any]], heads: list[str]) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(14, 6), dpi=90)
    names = [r["arm"] for r in rows]
    for ax, m, head in zip(axes.ravel(), METRICS, heads):
        ax.bar(names, [r[m] for r in rows], yerr=[r[f"{m}_std"] for r in rows], color="#4a7fb5")
        ax.set_title(head)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    fig.suptitle("last-epoch checkpoint on the real validation photos (lower is better)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def default_arms(names: list[str]) -> list[tuple[str, dict[str, Any]]]:
    unknown = [n for n in names if n not in DEFAULT_ARMS and n != ORI_ARM]
    if unknown:
        raise ValueError(f"unknown arm(s) {', '.join(unknown)}; the defaults are {', '.join(DEFAULT_ARMS)} and {ORI_ARM}")
    return [(n, dict(DEFAULT_ARMS.get(n, {}))) for n in names]


def with_arms(cfg: ExperimentConfig, arms: list[tuple[str, dict[str, Any]]]) -> ExperimentConfig:
    return replace(cfg, arms=tuple((n, tuple(sorted(o.items(), key=lambda kv: kv[0]))) for n, o in arms))
