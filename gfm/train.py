"""`gfm train`: one plain `train_one_epoch` / `evaluate`, and a checkpoint with everything
needed to resume exactly (model, optimiser, AMP scaler, epoch, step, RNG state, config);
with validation photos also ``best.pt``, the weights of the epoch with the lowest SAD.

Under torchrun (WORLD_SIZE > 1) the model's BatchNorm layers become SyncBatchNorm (on CUDA), the model
is wrapped in DistributedDataParallel with a distributed sampler, every rank validates its
share of the validation photos (no rank waits in a collective while another one works), and
rank 0 alone logs and writes.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from rssn.checks import check_choice_setting, check_int_setting, check_number_setting
from rssn.imageio import atomic_write_bytes, atomic_write_json
from rssn.seeding import derive_rng
from rssn.shards import TarPart

from .checkpoint import load_checkpoint, model_checkpoint, model_config_of, save_checkpoint
from .data import MattingDataset, Sample, _source, check_samples, collate, find_samples, to_device
from .dist import distributed_context, unwrap
from .losses import LAPLACIAN_KINDS, gfm_loss
from .model import GFM, ModelConfig

LOSS_TERMS = ("loss", "ce", "focus_alpha", "focus_lap", "fusion_alpha", "fusion_lap", "comp")
# per step: seconds waiting for the loader, seconds from the batch's arrival to the step's end
TIME_COLUMNS = ("data_s", "compute_s")
PAPER_CUDA_BATCH = {"r34": 32, "r34_2b": 32, "r101": 8, "d121": 4}
CPU_BATCH = 4


# TrainConfig fields that decide the training data a run sees; --resume refuses to change them
DATA_SETTINGS = ("data", "fg", "bg", "per_fg", "route_options", "crop", "seed", "photo_fgbg")


def data_settings(cfg_or_json: TrainConfig | str) -> dict[str, Any]:
    """The data-deciding settings as plain JSON values (from a config or a checkpoint's JSON)."""
    doc = json.loads(cfg_or_json) if isinstance(cfg_or_json, str) else json.loads(json.dumps(asdict(cfg_or_json), default=str))
    out = {k: doc.get(k) for k in DATA_SETTINGS}
    out["route_options"] = [o for o in (out["route_options"] or []) if o[0] != "cache_dir"]
    return out


def default_batch_size(backbone: str, device_type: str) -> int:
    """The paper's batch on CUDA (32 for r34, 8 for r101, 4 for d121); on CPU one that fits in
    24 GB at the default crop."""
    return PAPER_CUDA_BATCH[backbone] if device_type == "cuda" else CPU_BATCH


@dataclass(frozen=True)
class TrainConfig:
    data: tuple[str, ...]
    out: str
    backbone: str = "r34"
    rosta: str = "tt"
    decoder: str = "glance-focus"
    ppm: bool = True
    bridge: bool = True
    pretrained: str = "none"
    crop: int = 320
    batch_size: int | None = 4  # None: the checkpoint's on a resume, else default_batch_size for the device
    epochs: int = 10
    lr: float = 1e-5
    seed: int = 0
    # loader processes; None: default_workers(). 0 (the default for Python callers) loads in this
    # process. Workers start from a fresh forkserver (loader_context), so any caller may ask for them.
    workers: int | None = 0
    device: str = "auto"
    amp: bool = True
    val: str | None = None
    max_steps_per_epoch: int | None = None
    resume: str | None = None
    fg: str | None = None  # with bg: composites made on the fly with the rssn route
    bg: str | None = None
    per_fg: int = 5
    route_options: tuple[tuple[str, Any], ...] = ()
    digest_log: str | None = None  # every rank appends (step, hash of its weights) to DIGEST_LOG.rankN
    photo_fgbg: bool = True  # closed-form F and B for photos, so they get the composition loss too
    cache_dir: str | None = None  # the rssn cache (default: the user's)
    laplacian: str = "textbook"  # the Laplacian terms' pyramid: textbook | authors (gfm.losses)
    allow_val_overlap: bool = False  # validate on training photos anyway (recorded in history.json)

    def __post_init__(self) -> None:
        """The ranges `gfm train`'s options enforce, for Python callers too (`gfm experiment`)."""
        own = "TrainConfig"
        self.model_config()  # backbone, RoSTa, decoder: ModelConfig checks them
        check_int_setting(own, "crop", self.crop, 64)
        if self.crop % 32:
            raise ValueError(f"{own}: crop {self.crop}: must be a multiple of 32")
        check_int_setting(own, "batch_size", self.batch_size, 1, optional=True)
        check_int_setting(own, "epochs", self.epochs, 1)
        check_number_setting(own, "lr", self.lr, 0.0, lo_open=True)
        check_int_setting(own, "workers", self.workers, 0, optional=True)
        check_int_setting(own, "max_steps_per_epoch", self.max_steps_per_epoch, 1, optional=True)
        check_int_setting(own, "per_fg", self.per_fg, 1)
        check_choice_setting(own, "laplacian", self.laplacian, LAPLACIAN_KINDS)
        if not self.data and not (self.fg and self.bg):
            raise ValueError(f"{own}: give data (folders, shards or stores), or fg and bg for on-the-fly composites")

    def model_config(self) -> ModelConfig:
        return ModelConfig(backbone=self.backbone, rosta=self.rosta, decoder=self.decoder, ppm=self.ppm,
                           bridge=self.bridge, input_range="imagenet")


@dataclass
class TrainState:
    epoch: int = 0  # completed epochs
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but CUDA is not available; use --device cpu")
    return torch.device(name)


def _epoch_indices(n: int, seed: int, epoch: int, rank: int, world: int) -> list[int]:
    """This rank's share of a seeded permutation of the data (padded to divide evenly)."""
    order = derive_rng(seed, "order", epoch).permutation(n).tolist()
    per = -(-n // world)
    order += order[: per * world - n]
    return order[rank::world]


def training_images(cfg: TrainConfig, samples: list[Sample], dataset) -> list:
    """Every training photo and foreground of the run (the files; shard members are not files)."""
    if cfg.fg and cfg.bg:
        return [it.image for it in dataset.items]
    paths = [s.image for s in samples]
    from .store import is_store

    for d in cfg.data:  # a store: the folders it was packed from, where they still are
        if is_store(d):
            header = json.loads((Path(d) / "header.json").read_text())
            for src in header.get("sources", []):
                if Path(src).is_dir():
                    paths += [s.image for s in find_samples(src)[0]]
    return paths


def file_pairs(samples: list[Sample]) -> list[tuple[Path, Path]] | None:
    """The (photo, matte) files of ``samples``; None when any is a member of a webdataset shard."""
    pairs = [(s.image, s.alpha) for s in samples if isinstance(s.image, Path) and isinstance(s.alpha, Path)]
    return pairs if len(pairs) == len(samples) else None


def check_val_files(val: str | os.PathLike, samples: list[Sample]) -> list[tuple[Path, Path]]:
    """The validation (photo, matte) files. They must be files: the overlap check with the training
    photos reads files (it leaves shard members out), so webdataset shards would go unchecked;
    ValueError says what to give."""
    pairs = file_pairs(samples)
    if pairs is None:
        raise ValueError(f"--val {val}: webdataset shards cannot be validated on (the overlap check with the "
                         "training photos reads files); compose the validation set with --format png, or unpack "
                         "the shards")
    return pairs


def check_val_overlap(cfg: TrainConfig, val_samples: list[Sample], train_paths: list) -> list[dict[str, str]]:
    """The validation photos that are training photos: an error naming them unless
    ``cfg.allow_val_overlap``, then returned so that the run records them."""
    from .leakage import find_overlap, overlap_message

    overlap = find_overlap([s.image for s in val_samples], train_paths, cfg.workers or None)
    if overlap and not cfg.allow_val_overlap:
        raise ValueError(f"--val {cfg.val}: {overlap_message(overlap)}")
    return overlap


def val_fingerprint(val_samples: list[Sample]) -> str | None:
    """sha256 over the validation set's names, image bytes and matte bytes (None without --val):
    best.pt compares SAD only within one validation set."""
    import hashlib

    if not val_samples:
        return None
    h = hashlib.sha256()
    for s in sorted(val_samples, key=lambda s: s.name):
        h.update(s.name.encode() + b"|")
        for p in (s.image, s.alpha):
            data = p.load().data if isinstance(p, TarPart) else Path(p).read_bytes()
            h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


def check_resume_settings(path: str, ckpt: dict[str, Any], cfg: TrainConfig, world: int, val_fp: str | None) -> None:
    """Refuse to resume with another batch size, learning rate, number of processes or
    validation set: the run would silently become another experiment (the device may differ)."""
    old = json.loads(ckpt["config"])
    diffs = []
    for key, option in (("batch_size", "--batch-size"), ("lr", "--lr")):
        if old.get(key) is not None and old[key] != getattr(cfg, key):
            diffs.append(f"{option} {old[key]} in the checkpoint, {getattr(cfg, key)} now")
    if "world_size" in ckpt and int(ckpt["world_size"]) != world:
        diffs.append(f"{int(ckpt['world_size'])} process(es) in the checkpoint, {world} now (the effective batch)")
    if "val_fingerprint" in ckpt and (ckpt["val_fingerprint"] or None) != val_fp:
        was = f"--val {old.get('val')}" if ckpt["val_fingerprint"] else "no --val"
        diffs.append(f"{was} in the checkpoint, {'--val ' + str(cfg.val) if val_fp else 'no --val'} now, "
                     "or its photos changed (best.pt compares SAD within one validation set)")
    if diffs:
        raise ValueError(f"{path}: the checkpoint was trained with other settings ({'; '.join(diffs)}); resume "
                         "with the same settings, or train into another --out")


def train_one_epoch(model, loader, optimizer, scaler, device, epoch: int, state: TrainState, on_step,
                    max_steps: int | None = None, progress: bool = True, laplacian: str = "textbook") -> dict[str, float]:
    """One pass over ``loader``; returns the mean of each loss term (``laplacian``: the pyramid)
    and ``train_replaced``, the count of samples that failed to load and were replaced in the
    batches consumed (each batch's ``replaced``, :func:`gfm.data.served`)."""
    from tqdm import tqdm

    model.train()
    sums = {k: 0.0 for k in (*LOSS_TERMS, *TIME_COLUMNS)}
    n = 0
    use_amp = scaler is not None and scaler.is_enabled()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", unit="step", disable=not progress, dynamic_ncols=True)
    replaced = 0
    t_ready = time.perf_counter()
    for batch in bar:
        t_got = time.perf_counter()
        counts = batch.pop("replaced", None)  # a count that travelled with the data, not an input
        if counts is not None:
            replaced += int(counts.sum())
        batch = to_device(batch, device)
        with torch.autocast(device_type=device.type, enabled=use_amp):
            out = model(batch["image"])
        terms = gfm_loss(out, batch, laplacian)
        optimizer.zero_grad(set_to_none=True)
        if use_amp:
            scaler.scale(terms["loss"]).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            terms["loss"].backward()
            optimizer.step()
        state.step += 1
        values = {k: float(terms[k].detach()) for k in LOSS_TERMS}  # waits for the device: compute ends here
        t_done = time.perf_counter()
        values["data_s"], values["compute_s"] = t_got - t_ready, t_done - t_got
        t_ready = t_done
        for k in sums:
            sums[k] += values[k]
        n += 1
        on_step(epoch, state.step, values)
        bar.set_postfix(loss=f"{values['loss']:.4f}")
        if max_steps is not None and n >= max_steps:
            break
    bar.close()
    means = {k: v / max(n, 1) for k, v in sums.items()}
    total = sums["data_s"] + sums["compute_s"]
    means["data_share"] = sums["data_s"] / total if total > 0 else 0.0
    means["train_replaced"] = replaced
    return means


@torch.no_grad()
def evaluate(model, samples: list[Sample], device) -> dict[str, float]:
    """Whole-image SAD/1000 and MSE of the predictions (the authors' hybrid protocol) on
    ``samples``: sums and count, so that ranks can add up their shares."""
    from rssn.imageio import read_image, read_matte

    from .predict import predict_matte

    core = unwrap(model)
    was_training = core.training
    sad = mse = 0.0
    for s in samples:
        image = read_image(_source(s.image))
        gt = read_matte(_source(s.alpha)).alpha.astype(np.float64)
        pred = predict_matte(core, image, device=device).astype(np.float64)
        sad += float(np.abs(pred - gt).sum() / 1000)
        mse += float(((pred - gt) ** 2).mean())
    core.train(was_training)
    return {"sad": sad, "mse": mse, "n": float(len(samples))}


def validate(model, samples: list[Sample], device, rank: int, world: int) -> dict[str, float]:
    """Mean validation SAD and MSE; under DDP each rank scores every world-th photo and the
    sums are added with one all_reduce that every rank reaches at the same point."""
    part = evaluate(model, samples[rank::world], device)
    if world > 1:
        import torch.distributed as dist

        t = torch.tensor([part["sad"], part["mse"], part["n"]], dtype=torch.float64,
                         device=device if device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        part = {"sad": float(t[0]), "mse": float(t[1]), "n": float(t[2])}
    n = max(part["n"], 1.0)
    return {"val_sad": part["sad"] / n, "val_mse": part["mse"] / n}


def weights_digest(model) -> str:
    """sha256 over every parameter, in name order (to compare ranks). BatchNorm running
    statistics are left out: each rank updates them from its own batch, and DDP broadcasts
    rank 0's at the start of every forward pass."""
    import hashlib

    core = unwrap(model)
    h = hashlib.sha256()
    for name, t in sorted(core.named_parameters()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def make_checkpoint(model, optimizer, scaler, state: TrainState, cfg: TrainConfig, world: int = 1,
                    val_fp: str | None = None, best_val_sad: float | None = None) -> dict[str, Any]:
    return model_checkpoint(
        model,
        world_size=world,
        val_fingerprint=val_fp or "",
        best_val_sad=float("inf") if best_val_sad is None else best_val_sad,
        optimizer=optimizer.state_dict(),
        scaler=scaler.state_dict() if scaler is not None else {},
        epoch=state.epoch,
        step=state.step,
        history=json.dumps(state.history),
        torch_rng=torch.get_rng_state(),
        config=json.dumps(asdict(cfg), default=str),
    )


def _write_losses_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["epoch", "step", *LOSS_TERMS, *TIME_COLUMNS],
                       restval="", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    atomic_write_bytes(path, buf.getvalue().encode())


def _read_losses_csv(path: Path, before_epoch: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if int(r["epoch"]) < before_epoch]


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for k in LOSS_TERMS:
        ax.plot(steps, [float(r[k]) for r in rows], label=k, linewidth=1.5 if k == "loss" else 0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def run_train(cfg: TrainConfig, progress: bool = True, log=print) -> TrainState:
    """Train (or resume) and write checkpoints and logs under ``cfg.out``: set up, data,
    validation set, resume point, model, then the epochs: each one's loader, training pass,
    validation, and files (:func:`_save_epoch`, rank 0)."""
    ctx, device = _set_up(cfg)
    rank, world, distributed, is_main = ctx.rank, ctx.world_size, ctx.distributed, ctx.is_main
    out = Path(cfg.out)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    dataset, samples, failures = _training_set(cfg, is_main, log)
    val = _validation_set(cfg, samples, dataset, is_main, log)
    cfg, resume, ckpt = _resume_point(cfg, out, device)
    assert cfg.batch_size is not None  # _resume_point sets it when it was None
    model, optimizer, scaler, state, best_val_sad = _model_and_state(cfg, device, resume, ckpt, world,
                                                                     val.fingerprint, is_main, log)
    del ckpt
    model, synced_bn = _wrap_distributed(model, device, distributed)

    rows = _read_losses_csv(out / "losses.csv", state.epoch) if is_main else []
    if is_main:
        log(f"{len(dataset)} training samples per epoch, {len(failures)} skipped; batch {cfg.batch_size} x {world} "
            f"process(es) = effective batch {cfg.batch_size * world}; device {device}")

    def on_step(epoch: int, step: int, values: dict[str, float]) -> None:
        if is_main:
            rows.append({"epoch": epoch, "step": step, **{k: f"{v:.6g}" for k, v in values.items()}})
        if cfg.digest_log:
            with open(f"{cfg.digest_log}.rank{rank}", "a") as f:
                f.write(f"{step} {weights_digest(model)}\n")

    workers = cfg.workers if cfg.workers is not None else default_workers(world)
    for epoch in range(state.epoch, cfg.epochs):
        loader = _epoch_loader(dataset, cfg, epoch, rank, world, workers, device)
        t0 = time.perf_counter()
        means = train_one_epoch(model, loader, optimizer, scaler, device, epoch, state, on_step,
                                cfg.max_steps_per_epoch, progress and is_main, cfg.laplacian)
        if distributed:
            means = _mean_over_ranks(means, device)
        state.epoch = epoch + 1
        record = {"epoch": state.epoch, "seconds": round(time.perf_counter() - t0, 2), "step": state.step,
                  "samples": len(dataset), **means}
        if val.samples:
            record.update(_validate_epoch(model, val, device, rank, world, broadcast=distributed and not synced_bn))
        state.history.append(record)
        if is_main:
            best_val_sad = _save_epoch(out, record, rows, model, optimizer, scaler, state, cfg, world, val,
                                       best_val_sad)
            log(_epoch_line(record))
    if is_main and state.epoch >= cfg.epochs:  # also on a resume that found nothing left to do
        _write_history(out, state.history, val.overlap, val.skipped)
    if distributed:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return state


def _epoch_loader(dataset: MattingDataset, cfg: TrainConfig, epoch: int, rank: int, world: int, workers: int,
                  device) -> DataLoader:
    """The loader of one epoch: this rank's share of the epoch's seeded order, in batches (the
    last partial batch dropped when there is a full one), ``workers`` processes from a forkserver."""
    assert cfg.batch_size is not None  # _resume_point decided it
    dataset.set_epoch(epoch)
    indices = _epoch_indices(len(dataset), cfg.seed, epoch, rank, world)
    return DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=cfg.batch_size, shuffle=False,
                      num_workers=workers, drop_last=len(indices) >= cfg.batch_size,
                      pin_memory=device.type == "cuda", collate_fn=collate, worker_init_fn=worker_init,
                      prefetch_factor=4 if workers else None, persistent_workers=False,
                      multiprocessing_context=loader_context() if workers else None)


def _validate_epoch(model, val: _Validation, device, rank: int, world: int, broadcast: bool) -> dict[str, float]:
    """The epoch record's validation part: SAD, MSE, and the counts of overlapping and skipped
    validation files. ``broadcast``: give every rank rank 0's BatchNorm statistics first (DDP
    without SyncBatchNorm), so that all ranks score one model."""
    if broadcast:
        _broadcast_buffers(model)
    part = validate(model, val.samples, device, rank, world)
    part["val_overlap"] = len(val.overlap)
    part["val_skipped"] = len(val.skipped)
    return part


def _save_epoch(out: Path, record: dict[str, Any], rows: list[dict[str, Any]], model, optimizer, scaler,
                state: TrainState, cfg: TrainConfig, world: int, val: _Validation, best_val_sad: float) -> float:
    """Rank 0's files after an epoch: last.pt, best.pt when the validation SAD is the lowest so
    far, losses.csv, loss_curves.png and history.json; returns the best validation SAD."""
    # last.pt first, holding best_val_sad: a kill before best.pt is written leaves a run whose
    # resume does not re-decide best (best.pt may then lag one epoch, never lead last.pt)
    is_best = "val_sad" in record and record["val_sad"] <= best_val_sad
    if is_best:
        best_val_sad = record["val_sad"]
    save_checkpoint(make_checkpoint(model, optimizer, scaler, state, cfg, world, val.fingerprint, best_val_sad),
                    out / "last.pt")
    if is_best:
        save_checkpoint(model_checkpoint(model, epoch=state.epoch, val_sad=record["val_sad"]), out / "best.pt")
    _write_losses_csv(out / "losses.csv", rows)
    plot_curves(rows, out / "loss_curves.png")
    _write_history(out, state.history, val.overlap, val.skipped)
    return best_val_sad


def _epoch_line(record: dict[str, Any]) -> str:
    """The line logged after an epoch: loss, share of time waiting for data, validation scores,
    and the samples that failed to load (each named in the log as it happened) when there were any."""
    replaced = record.get("train_replaced", 0)
    return "epoch {epoch}: loss {loss:.4f}, waiting for data {share:.0%} of {seconds:.1f} s".format(
        share=record["data_share"], **record) + \
        (f", val SAD {record['val_sad']:.3f}, MSE {record['val_mse']:.5f}" if "val_sad" in record else "") + \
        (f"; {replaced} sample(s) failed to load and were replaced by the next" if replaced else "")


def _set_up(cfg: TrainConfig):
    """(distributed context, device): under torchrun, joins the process group (NCCL on CUDA, gloo
    on CPU) and takes the local GPU; otherwise the device asked for."""
    ctx = distributed_context()
    if ctx.distributed:
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
        dist.init_process_group(backend)
        device = torch.device(f"cuda:{ctx.local_rank}") if backend == "nccl" else torch.device("cpu")
        if backend == "nccl":
            torch.cuda.set_device(device)
    else:
        device = pick_device(cfg.device)
    return ctx, device


def _training_set(cfg: TrainConfig, is_main: bool, log) -> tuple[MattingDataset, list[Sample], list[tuple[str, str]]]:
    """The training dataset (folders or shards, stores, or on-the-fly composites), the samples
    read from folders, and the skipped files with their reasons (logged on rank 0)."""
    from .store import StoreDataset, is_store

    stores = [d for d in cfg.data if is_store(d)]
    if stores and len(stores) != len(cfg.data):
        raise ValueError(f"--data mixes stores ({', '.join(stores)}) with folders; pack the folders too "
                         "(`gfm pack --data DIR --out STORE`) or train on folders only")
    samples: list[Sample] = []
    failures: list[tuple[str, str]] = []
    for d in ([] if stores else cfg.data):
        s, f = find_samples(d)
        samples += s
        failures += f
    samples, bad = check_samples(samples)
    failures += bad
    cache_root = cfg.cache_dir
    if cache_root is None:
        from rssn.compose import default_cache_dir

        cache_root = str(default_cache_dir())
    dataset: MattingDataset
    if cfg.fg and cfg.bg:
        from .data import OnTheFlyDataset

        on_the_fly = OnTheFlyDataset(cfg.fg, cfg.bg, cfg.rosta, cfg.crop, cfg.seed, cfg.per_fg, dict(cfg.route_options))
        failures += [(f.path, f.reason) for f in on_the_fly.failures]
        if not on_the_fly.items:
            raise ValueError(f"no usable foreground in {cfg.fg}")
        dataset = on_the_fly
    elif stores:
        packed = StoreDataset(stores, cfg.rosta, cfg.crop, cfg.seed, photo_fgbg=cfg.photo_fgbg)
        failures += packed.failures
        dataset = packed
    else:
        dataset = MattingDataset(samples, cfg.rosta, cfg.crop, cfg.seed,
                                 photo_fgbg_cache=cache_root if cfg.photo_fgbg else None)
    if is_main:
        for path, reason in failures:
            log(f"skipped {path}: {reason}")
    if len(dataset) == 0:
        raise ValueError("no usable training sample in " + ", ".join(cfg.data))
    return dataset, samples, failures


@dataclass
class _Validation:
    samples: list[Sample]
    skipped: list[tuple[str, str]]  # unreadable or unpaired validation files: named, counted
    overlap: list[dict[str, str]]  # validation photos that are training photos (--allow-val-overlap)
    fingerprint: str | None


def _validation_set(cfg: TrainConfig, samples: list[Sample], dataset: MattingDataset, is_main: bool,
                    log) -> _Validation:
    """--val's photos, the files skipped, the overlap with the training photos (an error unless
    --allow-val-overlap) and the set's fingerprint (recorded for resume)."""
    val_samples: list[Sample] = []
    val_skipped: list[tuple[str, str]] = []  # unreadable or unpaired validation files: named, counted
    if cfg.val:
        val_samples, vf = find_samples(cfg.val)
        check_val_files(cfg.val, val_samples)
        val_samples, vb = check_samples(val_samples)
        val_skipped = [(str(p), r) for p, r in vf + vb]
        if is_main:
            for path, reason in val_skipped:
                log(f"skipped validation file {path}: {reason}")
        if not val_samples:
            raise ValueError(f"--val {cfg.val}: no readable photo with a matte" +
                             (f" ({len(val_skipped)} file(s) skipped, named above)" if val_skipped else ""))
    overlap = check_val_overlap(cfg, val_samples, training_images(cfg, samples, dataset)) if val_samples else []
    if overlap and is_main:
        log(f"warning (--allow-val-overlap): {len(overlap)} validation photo(s) are training photos; "
            "the validation SAD measures memory for them")
    val_fp = val_fingerprint(val_samples)

    return _Validation(val_samples, val_skipped, overlap, val_fp)


def _resume_point(cfg: TrainConfig, out: Path, device) -> tuple[TrainConfig, str | None, dict[str, Any] | None]:
    """(cfg with its batch size decided, the checkpoint path, the checkpoint) for --resume."""
    resume = cfg.resume
    if resume == "auto":
        resume = str(out / "last.pt") if (out / "last.pt").exists() else None
    ckpt = load_checkpoint(resume) if resume else None
    if cfg.batch_size is None:  # the default: recorded in the checkpoint, never re-derived on another device
        old_batch = json.loads(ckpt["config"]).get("batch_size") if ckpt else None
        cfg = replace(cfg, batch_size=int(old_batch) if old_batch else default_batch_size(cfg.backbone, device.type))
    return cfg, resume, ckpt


def _model_and_state(cfg: TrainConfig, device, resume: str | None, ckpt: dict[str, Any] | None, world: int,
                     val_fp: str | None, is_main: bool, log):
    """(model, optimiser, scaler, state, best validation SAD): new, or restored from ``ckpt``
    after checking that the model, data and training settings are the checkpoint's."""
    torch.manual_seed(cfg.seed)
    model: torch.nn.Module = GFM(config=cfg.model_config(), pretrained=cfg.pretrained).to(device)  # DDP may wrap it
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")
    state = TrainState()
    best_val_sad = float("inf")

    if ckpt is not None:
        assert resume is not None  # the checkpoint was loaded from it
        old = model_config_of(ckpt)
        if old != cfg.model_config():
            diffs = [f"{k}: {v} in the checkpoint, {getattr(cfg.model_config(), k)} now"
                     for k, v in old.to_dict().items() if v != getattr(cfg.model_config(), k)]
            raise ValueError(f"{resume}: the checkpoint's model differs from the one asked for ({'; '.join(diffs)}); "
                             "pass the same model options, or train into another --out")
        old_data, new_data = data_settings(ckpt["config"]), data_settings(cfg)
        diffs = [f"{k}: {json.dumps(old_data[k])} in the checkpoint, {json.dumps(new_data[k])} now"
                 for k in DATA_SETTINGS if old_data[k] != new_data[k]]
        if diffs:
            raise ValueError(f"{resume}: the checkpoint was trained on other data ({'; '.join(diffs)}); resume with "
                             "the same data options, or train into another --out")
        old_lap = json.loads(ckpt["config"]).get("laplacian", "textbook")
        if old_lap != cfg.laplacian:
            raise ValueError(f"{resume}: the checkpoint was trained with --laplacian {old_lap}, not {cfg.laplacian}; "
                             f"resume with --laplacian {old_lap}, or train into another --out")
        check_resume_settings(resume, ckpt, cfg, world, val_fp)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["torch_rng"])
        state = TrainState(int(ckpt["epoch"]), int(ckpt["step"]), json.loads(ckpt["history"]))
        best_val_sad = float(ckpt.get("best_val_sad", min([h.get("val_sad", float("inf")) for h in state.history],
                                                          default=float("inf"))))
        if is_main:
            log(f"resumed from {resume} after epoch {state.epoch} (step {state.step})")
        del ckpt
    return model, optimizer, scaler, state, best_val_sad


def _wrap_distributed(model, device, distributed: bool):
    """(model, synced_bn): under torchrun, DDP (with SyncBatchNorm on CUDA)."""
    synced_bn = False
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        if device.type == "cuda":  # SyncBatchNorm needs CUDA; CPU (gloo) runs broadcast rank 0's before validating
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            synced_bn = True
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    return model, synced_bn


def _write_history(out: Path, history: list[dict[str, Any]], overlap: list[dict[str, str]],
                   val_skipped: list[tuple[str, str]]) -> None:
    """history.json (one record per epoch, with the counts); with --allow-val-overlap also
    val_overlap.json, the pairs; with validation files skipped, val_skipped.json names them."""
    if overlap:
        atomic_write_json(out / "val_overlap.json", overlap)
    if val_skipped:
        atomic_write_json(out / "val_skipped.json", [{"input": p, "reason": r} for p, r in val_skipped])
    atomic_write_json(out / "history.json", history)


def default_workers(world: int = 1) -> int:
    """Loader processes per training process: the cores available to each, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(8, cores // max(world, 1)))


def loader_context():
    """The start method of loader workers: a forkserver with the data modules preloaded.

    Workers forked from the training process itself hung before their first sample when that
    process had run thread pools (numba and OpenBLAS in evaluation, closed-form solves: seen in
    `gfm experiment`, #29); a forkserver is a fresh single-threaded process, and forking from it
    with the modules already imported keeps the start-up per epoch short. None (the platform's
    default) where there is no forkserver."""
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return None
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "cv2", "numpy", "gfm.data", "gfm.store"])
    return ctx


def worker_init(worker_id: int) -> None:
    """In each loader process OpenCV uses one thread: the workers are the parallelism."""
    import cv2

    cv2.setNumThreads(1)


EPOCH_COUNTS = ("train_replaced",)  # epoch record values that are counts: summed over ranks, not averaged


def _mean_over_ranks(means: dict[str, float], device) -> dict[str, float]:
    """The epoch's loss means averaged over the ranks (every rank runs the same number of
    steps); its counts (EPOCH_COUNTS) summed, so they count every rank's samples."""
    import torch.distributed as dist

    keys = sorted(means)
    t = torch.tensor([means[k] for k in keys], dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    world = dist.get_world_size()
    return {k: int(round(v)) if k in EPOCH_COUNTS else float(v) / world for k, v in zip(keys, t.tolist())}


def _broadcast_buffers(model) -> None:
    """Rank 0's BatchNorm running statistics to every rank, so that all ranks validate one model."""
    import torch.distributed as dist

    core = unwrap(model)
    for buf in core.buffers():
        dist.broadcast(buf.data, src=0)
