"""Command-line entry points: `rssn`, `bg20k` and `gfm`.

The CLI is the single source of configuration: options are parsed and validated here, once,
into the frozen config objects the pipelines take. Exit status (see RELIABILITY in README):
0 when the run made something (failed items are recorded in the manifest), 1 when nothing
could be made, 2 for wrong arguments.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

EXIT_OK, EXIT_NOTHING_MADE, EXIT_USAGE = 0, 1, 2


def _fail_usage(msg: str) -> None:
    click.echo(f"Error: {msg}", err=True)
    sys.exit(EXIT_USAGE)


def check_output_folder(out: Path, inputs: dict[str, Path]) -> None:
    """The output folder may not equal, contain or sit inside an input folder."""
    o = out.resolve()
    for name, p in inputs.items():
        i = p.resolve()
        if o == i or i in o.parents:
            _fail_usage(f"--out {out} is inside the {name} folder {p}; choose an output folder outside the inputs")
        if o in i.parents:
            _fail_usage(f"the {name} folder {p} is inside --out {out}; choose an output folder that holds no inputs")


def _parse_kernels(value: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated integers such as 20,30,40,50,60")
    if not ks or any(k < 1 for k in ks):
        raise click.BadParameter(f"{value!r}: kernel sizes must be positive integers")
    return ks


PROBABILITY = click.FloatRange(0.0, 1.0)


def _summary_table(rows: list[tuple[str, object]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


# ====================================================================== rssn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gfm-toolkit")
def rssn() -> None:
    """RSSN composition: make matting training composites from foregrounds and backgrounds."""


@rssn.command("compose")
@click.option("--fg", "fg_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Foregrounds: original/|image/ + mask/|alpha/, fg/ + alpha/, or RGBA images.")
@click.option("--bg", "bg_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Backgrounds: every image below this folder (e.g. bg20k's train/).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: image/ alpha/ fg/ bg/ manifest.jsonl summary.json.")
@click.option("--per-fg", default=5, show_default=True, type=click.IntRange(min=1), help="Backgrounds (composites) per foreground, K.")
@click.option("--seed", default=0, show_default=True, type=int, help="Fixes every random choice.")
@click.option("--route", type=click.Choice(["rssn", "plain"]), default="rssn", show_default=True,
              help="plain: alpha blending only (the paper's COMP-COCO / COMP-BG20K baseline).")
@click.option("--fg-method", type=click.Choice(["cf", "ml", "none"]), default="cf", show_default=True,
              help="Foreground colours: closed-form (Levin et al.), multi-level, or the photo's own colours.")
@click.option("--layout", type=click.Choice(["auto", "photo", "fg", "rgba"]), default="auto", show_default=True,
              help="Foreground layout; auto detects it from the sub-folder names.")
@click.option("--denoise-p", default=0.5, show_default=True, type=PROBABILITY, help="Probability of BM3D on the foreground, and independently on the background.")
@click.option("--denoise-sigma", default=None, type=click.FloatRange(min=0, min_open=True),
              help="BM3D noise level (0-255 scale); default: estimated from each image.")
@click.option("--denoise-profile", type=click.Choice(["np", "lc", "refilter", "vn", "high", "deb"]), default="np",
              show_default=True, help="bm3d profile; lc is about twice as fast.")
@click.option("--blur-p", default=0.5, show_default=True, type=PROBABILITY, help="Probability of the averaging filter on the background.")
@click.option("--blur-kernels", default="20,30,40,50,60", show_default=True, help="Kernel sizes to draw from.")
@click.option("--noise-p", default=0.5, show_default=True, type=PROBABILITY, help="Probability of Gaussian noise on the composite.")
@click.option("--noise-sigma", default=10.0, show_default=True, type=click.FloatRange(min=0), help="Noise sigma on the 0-255 scale.")
@click.option("--workers", default=None, type=click.IntRange(min=1), help="Worker processes  [default: all cores]")
@click.option("--cache", "cache_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Cache of foreground estimates and BM3D results  [default: OUT/cache]")
@click.option("--format", "image_format", type=click.Choice(["png", "jpg"]), default="png", show_default=True,
              help="Format of the composites in image/ (mattes, fg and bg are always PNG).")
@click.option("--png-level", default=1, show_default=True, type=click.IntRange(0, 9), help="PNG compression level (1 is fast).")
@click.option("--jpeg-quality", default=95, show_default=True, type=click.IntRange(1, 100))
@click.option("--quiet", is_flag=True, help="No progress bar.")
def rssn_compose(fg_dir: Path, bg_dir: Path, out_dir: Path, blur_kernels: str, workers: int | None,
                 quiet: bool, **opts) -> None:
    """Composite every foreground over K backgrounds with the RSSN route.

    \b
    For each foreground and each of its K backgrounds:
      1. foreground colours by closed-form estimation (once per foreground, cached)
      2. background scaled to cover the foreground, then a random crop
      3. p=0.5: BM3D on the foreground, and independently on the background
      4. p=0.5: box blur of the background, kernel from 20,30,40,50,60
      5. I = aF + (1-a)B
      6. p=0.5: Gaussian noise sigma 10 on the composite, clipped to [0, 255]

    \b
    Examples:
      rssn compose --fg data/AM-2k/train --bg bg20k/train --out comp --per-fg 5
      rssn compose --fg samples/fg --bg samples/bg --out demo-out --per-fg 2 --seed 1
      rssn compose --fg comp1k --bg coco --out plain --route plain      # blending only
      rssn compose --fg fgs --bg bgs --out abl --blur-p 1 --noise-p 0   # an ablation

    Re-running the same command skips finished composites and makes the same bytes; a
    killed run resumes. Bad inputs are recorded in OUT/manifest.jsonl and the run goes on.
    """
    from rssn.compose import ComposeConfig, run_compose
    from rssn.layout import LayoutError

    try:
        kernels = _parse_kernels(blur_kernels)
    except click.BadParameter as exc:
        _fail_usage(f"--blur-kernels {exc.message}")
    check_output_folder(out_dir, {"--fg": fg_dir, "--bg": bg_dir})
    cfg = ComposeConfig(fg_dir=fg_dir, bg_dir=bg_dir, out_dir=out_dir, blur_kernels=kernels,
                        workers=workers or os.cpu_count() or 1, **opts)
    try:
        summary = run_compose(cfg, progress=not quiet)
    except (LayoutError, FileNotFoundError) as exc:
        _fail_usage(str(exc))
    s = summary
    click.echo(_summary_table([
        ("foregrounds", s.foregrounds), ("backgrounds", s.backgrounds),
        ("composites planned", s.planned), ("made now", s.made), ("already done", s.skipped_existing),
        ("failed composites", s.failed_composites), ("failed inputs", s.failed_inputs),
        ("seconds", f"{s.seconds:.1f}"), ("composites/s", f"{s.composites_per_second:.2f}"),
        ("manifest", out_dir / "manifest.jsonl"),
    ]), err=True)
    for f in s.failures[:20]:
        click.echo(f"  failed: {f['input']}: {f['reason']}", err=True)
    if len(s.failures) > 20:
        click.echo(f"  ... and {len(s.failures) - 20} more failures in the manifest", err=True)
    if s.made + s.skipped_existing == 0:
        click.echo("Error: no composite could be made", err=True)
        sys.exit(EXIT_NOTHING_MADE)


# ====================================================================== bg20k


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gfm-toolkit")
def bg20k() -> None:
    """Build a BG-20k-style background set (not yet implemented; see issue 3)."""


# ====================================================================== gfm


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gfm-toolkit")
def gfm() -> None:
    """Glance and Focus Matting: train, predict and evaluate."""


@gfm.command("eval")
@click.option("--pred", "pred_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Predicted mattes (paired with the ground truth by file stem).")
@click.option("--gt", "gt_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Ground-truth mattes: L, RGB (R=G=B), RGBA or 16-bit PNG.")
@click.option("--trimap", "trimap_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Trimaps 0/128/255 (L or palette); default: made from the ground truth.")
@click.option("--protocol", type=click.Choice(["dim", "gfm"]), default="dim", show_default=True,
              help="dim: the Deep Image Matting MATLAB code; gfm: the GFM paper's evaluator.")
@click.option("--trimap-kernel", default=25, show_default=True, type=click.IntRange(min=1),
              help="Dilation/erosion kernel for generated trimaps.")
@click.option("--out-csv", type=click.Path(dir_okay=False, path_type=Path), help="One row per image and a mean row.")
@click.option("--out-json", type=click.Path(dir_okay=False, path_type=Path), help="Means, counts and failures.")
@click.option("--error-maps", type=click.Path(file_okay=False, path_type=Path), help="Write a PNG error map per image here.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def gfm_eval(pred_dir: Path | None, gt_dir: Path, trimap_dir: Path | None, protocol: str, trimap_kernel: int,
             out_csv: Path | None, out_json: Path | None, error_maps: Path | None, quiet: bool) -> None:
    """Score predicted mattes against ground truth with SAD, MSE, MAD, Grad and Conn.

    \b
    Protocols:
      dim  8-bit mattes over the trimap's unknown region; Grad and Conn exactly as the
           Deep Image Matting MATLAB code (the numbers most papers report)
      gfm  the GFM paper's evaluator: whole image, plus SAD/MSE/MAD in the transition
           area (SAD-TRAN ...) and SAD-FG, SAD-BG

    \b
    Examples:
      gfm eval --pred preds --gt data/alpha --trimap data/trimap --out-csv scores.csv
      gfm eval --pred preds --gt data/alpha --protocol gfm --out-json scores.json
      gfm eval --pred preds --gt data/alpha --error-maps errs/   # trimaps made from gt
    """
    from gfm.evaluate import EvalConfig, run_eval, summary_table, write_csv, write_json

    if pred_dir is None:
        _fail_usage("--pred is required")
    cfg = EvalConfig(pred_dir, gt_dir, trimap_dir, protocol, trimap_kernel, error_maps)
    result = run_eval(cfg, progress=not quiet)
    if out_csv:
        write_csv(result, out_csv)
    if out_json:
        write_json(result, out_json)
    click.echo(summary_table(result), err=True)
    if not result.rows:
        click.echo("Error: no image could be scored", err=True)
        sys.exit(EXIT_NOTHING_MADE)


if __name__ == "__main__":  # pragma: no cover
    rssn()
