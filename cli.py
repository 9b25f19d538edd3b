"""Command-line entry points: `rssn`, `bg20k` and `gfm`.

The CLI is the single source of configuration: options are parsed and validated here, once,
into the frozen config objects the pipelines take. Exit status (see RELIABILITY in README):
0 when the run made something (failed items are recorded in the manifest), 1 when nothing
could be made, 2 for wrong arguments.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from bg20k.download import DEFAULT_DISALLOWED_DIRECTIVES as DEFAULT_DIRECTIVES
from gfm.dist import distributed_context
from rssn.denoise import DEFAULT_PROFILE as DEFAULT_DENOISE_PROFILE
from rssn.denoise import PROFILES as DENOISE_PROFILES

if TYPE_CHECKING:
    import numpy as np

EXIT_OK, EXIT_NOTHING_MADE, EXIT_USAGE = 0, 1, 2


T = TypeVar("T")


def _fail_usage(msg: str) -> NoReturn:
    click.echo(f"Error: {msg}", err=True)
    sys.exit(EXIT_USAGE)


def _config(cls: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Build a command's configuration; the checks it makes itself (``__post_init__``) end the
    command as a usage error, like the options' own checks."""
    try:
        return cls(*args, **kwargs)
    except ValueError as exc:
        _fail_usage(str(exc))


def check_output_folder(out: Path, inputs: dict[str, Path], outputs_of_file=None) -> None:
    """The output folder may not equal, contain or sit inside an input folder.

    A file input is the file, not its folder: it is refused only when the output folder is that
    file, or when one of ``outputs_of_file(out, file)`` (the paths the command would write for
    it) is the file itself.
    """
    o = out.resolve()
    for name, p in inputs.items():
        i = p.resolve()
        if p.is_file():
            if o == i:
                _fail_usage(f"--out {out} is the {name} file {p}; choose an output folder")
            for written in (outputs_of_file(out, p) if outputs_of_file else ()):
                if written.resolve() == i:
                    _fail_usage(f"writing {written} would overwrite the {name} file {p}; choose another --out")
            continue
        if o == i or i in o.parents:
            _fail_usage(f"--out {out} is inside the {name} folder {p}; choose an output folder outside the inputs")
        if o in i.parents:
            _fail_usage(f"the {name} folder {p} is inside --out {out}; choose an output folder that holds no inputs")


def check_writable(out: Path) -> None:
    """Create the output folder and prove it is writable, or stop with one line saying why."""
    import tempfile

    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".tmp-write-check-"):
            pass
    except OSError as exc:
        _fail_usage(f"cannot write to {out}: {exc.strerror or exc}; choose a writable output folder")


def overwrite_option(f):
    """--overwrite [move|delete]: what to do with outputs of other settings in --out."""
    return click.option("--overwrite", type=click.Choice(["move", "delete"]), default=None, is_flag=False,
                        flag_value="move",
                        help="When --out holds outputs made with other settings: move them aside "
                             "(OUT.old-TIMESTAMP, the default of a bare --overwrite) or delete them. "
                             "Without it such a re-run stops before any work.")(f)


@contextlib.contextmanager
def held_output(out: Path, command: str):
    """Hold OUT/.lock for the run; a folder another run holds stops the command with exit 2."""
    from rssn.outdir import OutputFolderBusy, output_lock

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(output_lock(out, command))
        except OutputFolderBusy as exc:
            _fail_usage(str(exc))
        yield


@contextlib.contextmanager
def claimed_output(out: Path, command: str, settings: dict, *, may_grow: tuple[str, ...] = (),
                   may_change: tuple[str, ...] = (), overwrite: str | None = None):
    """Hold OUT/.lock for the run and check (then record) the settings that decide its bytes;
    a busy folder or changed settings stop the command with exit 2 before any work."""
    from rssn.outdir import SettingsChanged, check_settings

    with held_output(out, command):
        try:
            message = check_settings(out, command, settings, may_grow=may_grow, may_change=may_change,
                                     overwrite=overwrite)
        except SettingsChanged as exc:
            _fail_usage(str(exc))
        if message:
            click.echo(message, err=True)
        yield


def _parse_kernels(value: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated integers such as 20,30,40,50,60") from None
    if not ks or any(k < 1 for k in ks):
        raise click.BadParameter(f"{value!r}: kernel sizes must be positive integers")
    return ks


PROBABILITY = click.FloatRange(0.0, 1.0)
BACKBONE_CHOICES = ["r34", "r34_2b", "r101", "d121"]  # gfm.model.BACKBONES (not imported: torch loads slowly)
ROSTA_CHOICES = ["tt", "ft", "bt", "rim"]
BM3D_PROFILES = click.Choice(list(DENOISE_PROFILES))
# gfm.losses.LAPLACIAN_KINDS (not imported: torch loads slowly)
LAPLACIAN_OPTION = click.option(
    "--laplacian", type=click.Choice(["textbook", "authors"]), default="textbook", show_default=True,
    help="Pyramid of the Laplacian loss terms. textbook: separable 5x5 binomial kernel, reflect padding, band = "
         "level - upsampled next level. authors: the authors' code exactly (a kernel that sums two 1-D Gaussians, "
         "replicate padding, band = level - its blur), to compare with their training runs.")


def executor_options(f):
    """--executor and --ray-address, shared by the commands that can run on Ray."""
    f = click.option("--ray-address", default=None, help="Ray cluster address  [default: start a local Ray instance]")(f)
    return click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                        help="local processes, or tasks on a Ray cluster (same outputs).")(f)


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
              help="Output folder: image/ alpha/ fg/ bg/ manifest.jsonl summary.json ATTRIBUTION.csv DATASET.md dataset.json.")
@click.option("--per-fg", default=5, show_default=True, type=click.IntRange(min=1), help="Backgrounds (composites) per foreground, K.")
@click.option("--seed", default=0, show_default=True, type=int, help="Fixes every random choice.")
@click.option("--route", type=click.Choice(["rssn", "plain"]), default="rssn", show_default=True,
              help="plain: alpha blending only (the paper's COMP-COCO / COMP-BG20K baseline).")
@click.option("--fg-method", type=click.Choice(["cf", "cf-full", "ml", "none"]), default="cf", show_default=True,
              help="Foreground colours: closed-form (Levin et al.) on the transition band, the same over every "
                   "pixel (pymatting, slow), multi-level, or the photo's own colours.")
@click.option("--layout", type=click.Choice(["auto", "photo", "fg", "rgba"]), default="auto", show_default=True,
              help="Foreground layout; auto detects it from the sub-folder names.")
@click.option("--denoise-p", default=0.5, show_default=True, type=PROBABILITY, help="Probability of BM3D on the foreground, and independently on the background.")
@click.option("--denoise-sigma", default=None, type=click.FloatRange(min=0, min_open=True),
              help="BM3D noise level (0-255 scale); default: estimated from each image (a foreground's "
                   "where its own pixels are, alpha >= 0.99).")
@click.option("--denoise-profile", type=BM3D_PROFILES, default=DEFAULT_DENOISE_PROFILE, show_default=True,
              help="classic: white-noise BM3D as published; np: the bm3d package's default (exact variances "
                   "for correlated noise, 4.5x slower); lc: low complexity.")
@click.option("--blur-p", default=0.5, show_default=True, type=PROBABILITY, help="Probability of the averaging filter on the background.")
@click.option("--blur-kernels", default="20,30,40,50,60", show_default=True, help="Kernel sizes to draw from.")
@click.option("--noise-p", default=0.5, show_default=True, type=PROBABILITY, help="Probability of Gaussian noise on the composite.")
@click.option("--noise-sigma", default=10.0, show_default=True, type=click.FloatRange(min=0), help="Noise sigma on the 0-255 scale.")
@click.option("--workers", default=None, type=click.IntRange(min=1), help="Worker processes  [default: all cores]")
@executor_options
@click.option("--retries", default=2, show_default=True, type=click.IntRange(min=0), help="Ray: retries of a task whose worker died.")
@click.option("--cache", "cache_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Cache of foreground estimates and BM3D results, shared by runs  [default: ~/.cache/gfm-toolkit]")
@click.option("--format", "image_format", type=click.Choice(["png", "jpg", "webdataset", "store"]), default="png",
              show_default=True,
              help="Composites in image/ as PNG or JPEG (mattes, fg and bg are always PNG); webdataset also packs "
                   "every sample into OUT/shards/shard-NNNNNN.tar; store also packs them into the training store "
                   "OUT/store (`gfm train --data OUT/store`).")
@click.option("--shard-size", default=1000, show_default=True, type=click.IntRange(min=1), help="Samples per webdataset shard.")
@click.option("--png-level", default=1, show_default=True, type=click.IntRange(0, 9), help="PNG compression level (1 is fast).")
@click.option("--jpeg-quality", default=95, show_default=True, type=click.IntRange(1, 100))
@click.option("--bg-attribution", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV id,url,license,author,source of the backgrounds, matched by file stem  [default: the "
                   "ATTRIBUTION.csv `bg20k build` wrote, in or beside --bg]")
@click.option("--fg-attribution", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The same CSV for the foregrounds  [default: none: unknown licences]")
@click.option("--licenses", "licenses", default=None,
              help="Draw only inputs under these licences, e.g. cc0,cc-by (bg20k build's rule and spellings).")
@click.option("--require-license", is_flag=True, help="Never draw an input without a licence on record.")
@overwrite_option
@click.option("--quiet", is_flag=True, help="No progress bar.")
def rssn_compose(fg_dir: Path, bg_dir: Path, out_dir: Path, blur_kernels: str, workers: int | None,
                 overwrite: str | None, quiet: bool, licenses: str | None, **opts) -> None:
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
    killed run resumes; more foregrounds or a larger --per-fg only add composites. A re-run
    with any other setting that changes the bytes stops before any work and names it
    (or --overwrite). One run per --out at a time. Bad inputs are recorded in
    OUT/manifest.jsonl and the run goes on.

    \b
    Provenance: every composite's record names its inputs' licence, author and source;
    OUT/ATTRIBUTION.csv has one row per composite; OUT/DATASET.md (and dataset.json) is the
    dataset card: counts, route, operation frequencies, licences, terms, known limits.
    --licenses / --require-license are re-checked on every run: composites whose inputs
    the rule now refuses are withdrawn (a background's slot is made again).
    """
    from bg20k.licenses import parse_allowed
    from rssn.compose import ComposeConfig, DiskFullError, run_compose
    from rssn.layout import LayoutError
    from rssn.provenance import AttributionError, LicenceRuleError

    try:
        kernels = _parse_kernels(blur_kernels)
    except click.BadParameter as exc:
        _fail_usage(f"--blur-kernels {exc.message}")
    try:
        opts["licenses"] = parse_allowed(licenses) if licenses is not None else None
    except ValueError as exc:
        _fail_usage(str(exc))
    check_output_folder(out_dir, {"--fg": fg_dir, "--bg": bg_dir})
    check_writable(out_dir)
    cfg = ComposeConfig(fg_dir=fg_dir, bg_dir=bg_dir, out_dir=out_dir, blur_kernels=kernels,
                        workers=workers or os.cpu_count() or 1, **opts)
    from rssn.compose import PROVENANCE_SETTINGS, byte_settings

    try:
        with claimed_output(out_dir, "rssn compose", byte_settings(cfg), may_grow=("per_fg",),
                            may_change=PROVENANCE_SETTINGS, overwrite=overwrite):
            summary = run_compose(cfg, progress=not quiet)
    except (LayoutError, FileNotFoundError, AttributionError, LicenceRuleError) as exc:
        _fail_usage(str(exc))
    except DiskFullError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_NOTHING_MADE)
    s = summary
    click.echo(_summary_table([
        ("foregrounds", s.foregrounds), ("backgrounds", s.backgrounds),
        ("composites planned", s.planned), ("made now", s.made), ("already done", s.skipped_existing),
        ("failed composites", s.failed_composites), ("failed inputs", s.failed_inputs),
        ("refused by licence", f"{s.licence_refused_fg} foregrounds, {s.licence_refused_bg} backgrounds"),
        ("withdrawn now", s.withdrawn),
        ("seconds", f"{s.seconds:.1f}"), ("composites/s", f"{s.composites_per_second:.2f}"),
        ("manifest", out_dir / "manifest.jsonl"), ("dataset card", out_dir / "DATASET.md"),
    ]), err=True)
    for f in s.failures[:20]:
        click.echo(f"  failed: {f['input']}: {f['reason']}", err=True)
    if len(s.failures) > 20:
        click.echo(f"  ... and {len(s.failures) - 20} more failures in the manifest", err=True)
    if s.made + s.skipped_existing == 0:
        click.echo("Error: no composite could be made", err=True)
        sys.exit(EXIT_NOTHING_MADE)
    if cfg.image_format == "store":  # the composites (PNG, as --format png) packed for training
        from gfm.store import pack

        with held_output(out_dir, "rssn compose"):
            pack([str(out_dir)], out_dir / "store", photo_fgbg=False, workers=cfg.workers, executor=cfg.executor,
                 ray_address=cfg.ray_address, log=(lambda m: None) if quiet else (lambda m: click.echo(m, err=True)))


@rssn.command("denoise")
@click.option("--bg", "folder", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of images (recursively) to denoise, e.g. bg20k's train/.")
@click.option("--cache", "cache_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="The cache `rssn compose --cache` reads  [default: ~/.cache/gfm-toolkit]")
@click.option("--denoise-sigma", default=None, type=click.FloatRange(min=0, min_open=True),
              help="BM3D noise level (0-255 scale); default: estimated from each image.")
@click.option("--denoise-profile", type=BM3D_PROFILES, default=DEFAULT_DENOISE_PROFILE, show_default=True,
              help="The profile the compose runs will use.")
@click.option("--workers", default=None, type=click.IntRange(min=1), help="Worker processes  [default: all cores]")
@click.option("--quiet", is_flag=True)
def rssn_denoise(folder: Path, cache_dir: Path | None, denoise_sigma: float | None, denoise_profile: str,
                 workers: int | None, quiet: bool) -> None:
    """Pre-compute BM3D of every background into the cache that `rssn compose` reads.

    BM3D takes about 50 s per 1080p image on one core (profile classic; np 4.5x longer);
    run this once on a background set (in parallel, or on a bigger machine) and every later
    compose run finds the results.
    Use the same --denoise-sigma and --denoise-profile as the compose runs.

    \b
    Examples:
      rssn denoise --bg bg20k/train --workers 16
      rssn denoise --bg bg20k/train --cache /shared/cache --denoise-profile lc
    """
    from rssn.compose import default_cache_dir, run_denoise

    recs = run_denoise(folder, cache_dir or default_cache_dir(), denoise_sigma, denoise_profile,
                       workers or os.cpu_count() or 1, progress=not quiet)
    done = [r for r in recs if r["type"] == "denoised"]
    failed = [r for r in recs if r["type"] == "failure"]
    click.echo(_summary_table([("images", len(recs)), ("denoised now", sum(not r["cached_before"] for r in done)),
                               ("already cached", sum(r["cached_before"] for r in done)), ("failed", len(failed)),
                               ("cache", cache_dir or default_cache_dir())]), err=True)
    for r in failed:
        click.echo(f"  failed: {r['input']}: {r['reason']}", err=True)
    if not done:
        sys.exit(EXIT_NOTHING_MADE)


def _w1_cell(m: dict, is_reference: bool) -> str:
    if is_reference:
        return "ref"
    return "-" if m["w1"] is None else f"{m['w1']:.3g}"


@rssn.command("audit")
@click.option("--set", "sets", multiple=True, required=True, metavar="NAME=DIR",
              help="A set to measure: an rssn compose output, or photos with mattes (image/ + alpha/, fg/ + alpha/, "
                   "RGBA images). Repeat for each set.")
@click.option("--reference", default=None,
              help="The set the others are compared with  [default: the one set that is not composites]")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Report folder: audit.csv, audit.json, report.html, hist/, thumbs/.")
@click.option("--erode", default=8, show_default=True, type=click.IntRange(min=0),
              help="Pixels each region is eroded away from the matte's boundary.")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Measure at most N images per set (the first by name).")
@click.option("--detector", default=None,
              help="YOLO weights (path or name, as in bg20k build) to count salient objects in the background (sem_bg).")
@click.option("--conf", default=0.25, show_default=True, type=click.FloatRange(0, 1), help="Detector confidence.")
@click.option("--classes", default=None, help="Comma-separated class names that count [default: all].")
@click.option("--min-box-fraction", default=0.01, show_default=True, type=click.FloatRange(0, 1),
              help="Smallest box, as a fraction of the image, that counts.")
@click.option("--far", default=4, show_default=True, type=click.IntRange(min=0),
              help="Images shown per measure in the report's 'farthest from the reference'.")
@click.option("--workers", default=None, type=click.IntRange(min=1), help="Worker processes  [default: all cores]")
@executor_options
@click.option("--quiet", is_flag=True, help="No progress bar.")
def rssn_audit(sets: tuple[str, ...], reference: str | None, out_dir: Path, classes: str | None,
               workers: int | None, quiet: bool, **opts) -> None:
    """Measure how far composites are from real photos: noise, sharpness, resolution, colour.

    \b
    Per image, from its matte: the foreground (alpha >= 0.99) and background (alpha <= 0.01),
    eroded away from the boundary, and for each measure the gap between them:
      noise_*       Gaussian noise std (0-255), gap = log2(bg / fg)
      sharp_*       fine-scale gradient energy over local contrast, gap = log2(bg / fg)
      res_*         effective resolution from the spectrum (fraction of Nyquist), gap = log2
      lum/sat/temp/contrast_gap   Xue et al. 2012 colour statistics, bg - fg (contrast: log2)
      sem_bg        salient objects in the background (with --detector)
    Then per set and measure: median, quartiles and the Wasserstein-1 distance of its gaps to
    the reference set's (lower is closer to real).

    \b
    Outputs in --out: audit.csv (a row per image), audit.json (per set and measure),
    report.html (table, histograms, the composites farthest from the reference with their
    operations), summary.json (timings). Re-running measures only new or changed images.

    \b
    Examples:
      rssn audit --set plain=comp/plain --set rssn=comp/rssn --set real=AM-2k/val --out audit
      rssn audit --set rssn=comp/rssn --set real=photos --reference real --out audit --workers 8
      rssn audit --set rssn=comp/rssn --set real=photos --out audit --detector ~/weights/yolov8n.pt
    """
    from rssn.audit import AuditConfig, AuditError, parse_set, run_audit

    try:
        parsed = [parse_set(v) for v in sets]
    except AuditError as exc:
        _fail_usage(str(exc))
    names = [n for n, _ in parsed]
    if len(set(names)) != len(names):
        _fail_usage(f"--set names must differ: {', '.join(names)}")
    if reference is not None and reference not in names:
        _fail_usage(f"--reference {reference!r} is not one of the sets ({', '.join(names)})")
    check_output_folder(out_dir, {f"--set {n}": p for n, p in parsed if p.exists()})
    check_writable(out_dir)
    cfg = _config(AuditConfig, sets=tuple(parsed), out_dir=out_dir, reference=reference,
                      classes=tuple(c.strip() for c in classes.split(",") if c.strip()) if classes else None,
                      workers=workers or os.cpu_count() or 1, **opts)
    from bg20k.screen import DetectorError

    try:
        with held_output(out_dir, "rssn audit"):
            result = run_audit(cfg, progress=not quiet)
    except (AuditError, DetectorError) as exc:
        _fail_usage(str(exc))
    from rssn.audit import gap_columns

    gaps = gap_columns(result.columns)
    width = max(len(s.name) for s in result.sets) + 2
    lines = [f"  {'W1 to ' + result.reference:<{width + 4}}" + "".join(f"{c:>14}" for c in gaps)]
    for s in result.sets:
        vals = [result.measures[c][s.name] for c in gaps]
        cells = "".join(f"{_w1_cell(v, s.name == result.reference):>14}" for v in vals)
        ok = sum(r.get("status") == "ok" for r in result.rows if r["set"] == s.name)
        lines.append(f"  {s.name:<{width}}{ok:>4}" + cells)
    click.echo("\n".join(lines), err=True)
    bad = [r for r in result.rows if r.get("status") != "ok"] + [f for s in result.sets for f in s.failures]
    click.echo(_summary_table([
        ("images", len(result.rows)), ("measured now", result.measured_now), ("already measured", result.reused),
        ("not scored", len(bad)), ("seconds", f"{result.seconds:.1f}"),
        ("report", out_dir / "report.html"),
    ]), err=True)
    for r in bad[:20]:
        click.echo(f"  not scored: {r.get('set')}/{r.get('name', r.get('path'))}: {r['reason']}", err=True)
    if not any(r.get("status") == "ok" for r in result.rows):
        click.echo("Error: no image could be measured", err=True)
        sys.exit(EXIT_NOTHING_MADE)


# ====================================================================== bg20k


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gfm-toolkit")
def bg20k() -> None:
    """Build a BG-20k-style background set: high resolution, no duplicates, no salient objects."""


@bg20k.command("build")
@click.option("--src", "src_dirs", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder of images (recursively); repeatable.")
@click.option("--urls", "url_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A file of http(s) URLs: one per line, a CSV with a url column, or JSON lines; repeatable.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--min-short-side", default=1080, show_default=True, type=click.IntRange(min=1))
@click.option("--target-short-side", default=1080, show_default=True, type=click.IntRange(min=1))
@click.option("--quality", default=95, show_default=True, type=click.IntRange(1, 100), help="JPEG quality of the outputs.")
@click.option("--chroma", type=click.Choice(["444", "422", "420"]), default="444", show_default=True,
              help="JPEG chroma subsampling of the outputs (4:4:4 keeps full colour resolution).")
@click.option("--hash", "hash_name", type=click.Choice(["phash", "dhash", "whash", "ahash"]), default="phash", show_default=True)
@click.option("--dedup-distance", default=6, show_default=True, type=click.IntRange(0, 32),
              help="Hamming distance (of 64 bits) at or under which two images are near duplicates.")
@click.option("--no-screen", is_flag=True, help="Skip the YOLO salient-object screening.")
@click.option("--detector", default="yolov8n.pt", show_default=True,
              help="ultralytics weights by name (fetched when online), a local .pt path, or a model yaml.")
@click.option("--classes", default=None, help="Comma-separated class names that reject an image [default: all].")
@click.option("--conf", default=0.25, show_default=True, type=click.FloatRange(0, 1))
@click.option("--min-box-fraction", default=0.05, show_default=True, type=click.FloatRange(0, 1),
              help="A detection rejects only when its box covers at least this fraction of the image.")
@click.option("--detect-batch", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--val-fraction", default=0.25, show_default=True, type=click.FloatRange(0, 1),
              help="Share that goes to testval/ (the paper's 15k/5k), by a stable hash of the content.")
@click.option("--decisions", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV of image id and keep/reject written after review; overrides the automatic verdicts.")
@click.option("--workers", default=None, type=click.IntRange(min=1), help="Decode/resize processes  [default: all cores]")
@executor_options
@click.option("--require-license", is_flag=True,
              help="Reject every source whose URL list row gives no licence (folder sources have none).")
@click.option("--licenses", "licenses", default=None,
              help="Keep only these licences, e.g. cc0,cc-by,cc-by-sa (a name without a version matches every "
                   "version; 'CC BY 4.0', 'cc-by-4.0' and the creativecommons.org URL are the same licence).")
@click.option("--download-workers", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds allowed for one download attempt, slow senders included.")
@click.option("--max-bytes", default=50_000_000, show_default=True, type=click.IntRange(min=1))
@click.option("--max-redirects", default=5, show_default=True, type=click.IntRange(min=0))
@click.option("--retries", default=2, show_default=True, type=click.IntRange(min=0))
@click.option("--allow-private-networks", is_flag=True,
              help="Also fetch URLs whose host is loopback, private, link-local or otherwise not globally routable "
                   "(an intranet crawl). Off by default: a crawl list from the web must not reach your network.")
@click.option("--disallowed-header-directives", "directives", default=",".join(DEFAULT_DIRECTIVES), show_default=True,
              help="X-Robots-Tag directives that opt an image out (comma-separated; '' honours none).")
@click.option("--user-agent-contact", default=None, metavar="URL",
              help="A page or mailto: address added to the user agent, so that hosts can reach you.")
@click.option("--max-per-host", default=2, show_default=True, type=click.IntRange(min=1),
              help="Connections open to one host at a time, across all download workers.")
@overwrite_option
@click.option("--quiet", is_flag=True)
def bg20k_build(src_dirs, url_files, out_dir, hash_name, classes, no_screen, workers, overwrite, quiet, licenses,
                directives, user_agent_contact, **opts) -> None:
    """Build OUT/train and OUT/testval from folders and/or URL lists.

    \b
    Stages, each recorded per image in OUT/manifest.jsonl:
      1. decode (EXIF orientation; pixel limit against decompression bombs; transparent
         images rejected; embedded ICC profiles converted to sRGB)
      2. keep shorter side >= 1080, resize to 1080 on the shorter side, JPEG q95 4:4:4
      3. near-duplicate removal by perceptual hash and its mirror, against each group's kept
         image (the largest original, or the one kept before); a group shares one split
      4. YOLO screening: reject a listed class with conf >= --conf covering >= --min-box-fraction
      5. train / testval split by a stable hash of the content
    Also OUT/stats.json, OUT/ATTRIBUTION.csv (id, url, license, author, source of every kept
    image, from `license`, `author` and `source` columns of a CSV or JSON-lines URL list) and
    OUT/review.html: click a card (or arrows, then k / r) to change its verdict, filter by
    verdict or reason, and download decisions.csv for --decisions.
    Running again with more sources, a decisions file, another --detector (screens what it has
    not screened) or other screening thresholds (--classes, --conf, --min-box-fraction:
    recomputed from the stored detections) only processes what is new; a killed run resumes
    and reuses its finished downloads; any other changed setting stops before any work (or
    --overwrite). The detector is loaded and --classes checked before any download.

    \b
    Examples:
      bg20k build --src ~/photos --out bg --detector ~/weights/yolov8n.pt
      bg20k build --urls crawl.txt --urls more.csv --out bg --classes person,bird,car
      bg20k build --src ~/photos --out bg --decisions decisions.csv  # downloaded from review.html
      bg20k build --urls crawl.csv --out bg --licenses cc0,cc-by       # open licences only
      bg20k build --urls crawl.csv --out bg --user-agent-contact mailto:me@example.org

    \b
    Crawling responsibly (defaults): no URL whose host is not globally routable (each redirect
    and the address connected to are checked; --allow-private-networks for an intranet);
    X-Robots-Tag noai, noimageai, noindex, noimageindex honoured; user agent
    gfm-toolkit-bg20k/<version>; at most --max-per-host connections per host; Retry-After on
    429 and 503 honoured within the URL's deadline.
    """
    from bg20k.build import BuildConfig, run_build
    from bg20k.screen import DetectorError

    if not src_dirs and not url_files:
        _fail_usage("give at least one --src folder or --urls file")
    from bg20k.licenses import parse_allowed

    try:
        allowed = parse_allowed(licenses) if licenses is not None else None
    except ValueError as exc:
        _fail_usage(str(exc))
    wanted = tuple(dict.fromkeys(d.strip().lower() for d in directives.split(",") if d.strip()))
    bad = [d for d in wanted if not re.fullmatch(r"[a-z0-9_-]+", d)]
    if bad:
        _fail_usage(f"--disallowed-header-directives: {bad[0]!r} is not a directive name (letters, digits, - and _)")
    if user_agent_contact is not None and (not re.fullmatch(r"(https?://|mailto:)\S+", user_agent_contact)
                                           or any(ord(c) < 32 or ord(c) == 127 for c in user_agent_contact)):
        _fail_usage(f"--user-agent-contact {user_agent_contact!r}: give an http(s):// or mailto: address, no spaces")
    check_output_folder(out_dir, {f"--src {d}": d for d in src_dirs})
    check_writable(out_dir)
    cfg = _config(BuildConfig, out_dir=out_dir, src_dirs=tuple(src_dirs), url_files=tuple(url_files), hash=hash_name,
                      disallowed_header_directives=wanted, user_agent_contact=user_agent_contact,
                      screen=not no_screen, classes=tuple(c.strip() for c in classes.split(",") if c.strip()) if classes else None,
                      workers=workers or os.cpu_count() or 1, licenses=allowed, **opts)
    from bg20k.build import byte_settings

    try:
        with claimed_output(out_dir, "bg20k build", byte_settings(cfg),
                            may_change=("src_dirs", "url_files", "classes", "conf", "min_box_fraction", "decisions",
                                        "require_license", "licenses", "detector"),
                            overwrite=overwrite):
            stats = run_build(cfg, progress=not quiet, log=lambda m: click.echo(m, err=True))
    except DetectorError as exc:
        _fail_usage(str(exc))
    except ValueError as exc:
        _fail_usage(str(exc))
    c = stats.counts
    click.echo(_summary_table([
        ("sources", c["sources"]), ("candidates", c["candidates"]), ("kept", c["kept"]),
        ("train / testval", f"{c['train']} / {c['testval']}"),
        ("near duplicates", c["rejected_near_duplicate"]), ("salient objects", c["rejected_salient_object"]),
        ("too small", c["rejected_resolution"]), ("transparent", c["rejected_transparency"]),
        ("licence", c["rejected_license"]),
        ("opted out (X-Robots-Tag)", c["rejected_opt_out"]),
        ("refused: private network", c["rejected_private_network"]),
        ("failed", c["failed_decode"] + c["failed_download"]),
        ("seconds", f"{stats.seconds['total']:.1f}"), ("review", out_dir / "review.html"),
        ("attribution", out_dir / "ATTRIBUTION.csv"),
    ]), err=True)
    if c["kept"] == 0:
        click.echo("Error: no image was kept", err=True)
        sys.exit(EXIT_NOTHING_MADE)


# ====================================================================== gfm


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gfm-toolkit")
def gfm() -> None:
    """Glance and Focus Matting: train, predict and evaluate."""


@gfm.command("train")
@click.option("--data", "data", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Photos with mattes (original|image + mask|alpha) or `rssn compose` output; repeatable.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Run folder: last.pt, losses.csv, loss_curves.png, history.json.")
@click.option("--backbone", type=click.Choice(BACKBONE_CHOICES), default="r34", show_default=True,
              help="Encoder: ResNet-34, ResNet-34 with two extra blocks, ResNet-101 or DenseNet-121.")
@click.option("--rosta", type=click.Choice(ROSTA_CHOICES), default="tt", show_default=True,
              help="Representation of semantic and transition area: trimap, foreground or background mask, "
                   "or rim (all three and the RoSTa Integration Module).")
@click.option("--decoder", type=click.Choice(["glance-focus", "single"]), default="glance-focus", show_default=True,
              help="Ablation (Table 4): single = one decoder for both tasks.")
@click.option("--no-ppm", is_flag=True, help="Ablation: no pyramid pooling module in the glance decoder.")
@click.option("--no-bridge", is_flag=True, help="Ablation: no bridge block before the focus decoder.")
@click.option("--pretrained", default="imagenet", show_default=True,
              help="Encoder weights: imagenet (torchvision's; cached or downloaded), none, or a local .pth path.")
@click.option("--crop", default=320, show_default=True, type=click.IntRange(min=64),
              help="Training size after the random 640/960/1280 crop; a multiple of 32.")
@click.option("--batch-size", default=None, type=click.IntRange(min=1),
              help="Per process. [default: on CUDA the paper's: 32 for r34 and r34_2b, 8 for r101, 4 for d121; on CPU 4; "
                   "on --resume the checkpoint's]")
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(min=1),
              help="The paper trains 500 epochs on photos (ORI-Track) and 100 on composites (COMP-Track).")
@click.option("--lr", default=1e-5, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--workers", default=None, type=click.IntRange(min=0),
              help="Data-loader processes (0: load in the training process; the batches are the same whatever "
                   "the number)  [default: the cores available per training process, at most 8]")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu or cuda[:N].")
@click.option("--no-amp", is_flag=True, help="Disable mixed precision on CUDA.")
@click.option("--val", type=click.Path(exists=True, file_okay=False),
              help="Validation photos with mattes: SAD and MSE every epoch. A photo that is also a training photo "
                   "or foreground (same bytes, or a resized or re-encoded copy) is an error.")
@click.option("--allow-val-overlap", is_flag=True,
              help="Validate on training photos anyway; the pairs are recorded (history.json, val_overlap.json).")
@click.option("--max-steps-per-epoch", type=click.IntRange(min=1), default=None, help="Cap the steps of each epoch.")
@click.option("--resume", default=None, is_flag=False, flag_value="auto",
              help="Continue from a checkpoint; --resume alone (or 'auto') means OUT/last.pt when present.")
@click.option("--photo-fgbg/--no-photo-fgbg", default=True, show_default=True,
              help="Closed-form F and B for photos (cached), so photos get the composition loss too.")
@click.option("--fg", "fg_dir", type=click.Path(exists=True, file_okay=False),
              help="With --bg: foregrounds (any `rssn compose` layout) composited on the fly with the RSSN route.")
@click.option("--bg", "bg_dir", type=click.Path(exists=True, file_okay=False), help="Backgrounds for --fg.")
@click.option("--per-fg", default=5, show_default=True, type=click.IntRange(min=1), help="With --fg: composites per foreground per epoch.")
@click.option("--fg-method", type=click.Choice(["cf", "cf-full", "ml", "none"]), default="cf", show_default=True)
@click.option("--denoise-p", default=0.5, show_default=True, type=PROBABILITY)
@click.option("--denoise-profile", type=BM3D_PROFILES, default=DEFAULT_DENOISE_PROFILE, show_default=True)
@click.option("--cache", "cache_dir", default=None, help="The rssn cache  [default: ~/.cache/gfm-toolkit]")
@click.option("--digest-log", default=None,
              help="Check for distributed runs: every rank appends (step, hash of its weights) to DIGEST_LOG.rankN.")
@LAPLACIAN_OPTION
@overwrite_option
@click.option("--quiet", is_flag=True)
def gfm_train(data, out, backbone, rosta, decoder, no_ppm, no_bridge, pretrained, crop, batch_size, epochs, lr, seed,
              workers, device, no_amp, val, max_steps_per_epoch, resume, photo_fgbg, fg_dir, bg_dir, per_fg, fg_method,
              denoise_p, denoise_profile, cache_dir, digest_log, laplacian, allow_val_overlap, overwrite, quiet) -> None:
    """Train a GFM (the authors' network) on photos with mattes or on `rssn compose` output.

    \b
    Loss (Eq. 6 of the paper): cross-entropy on the glance logits + focus alpha and Laplacian
    losses where the glance map leaves alpha undecided + alpha, Laplacian and composition
    losses on the collaborative matte (composition: a F + (1 - a) B against a_gt F + (1 - a_gt) B
    with the same F and B, never the noisy input; photos get closed-form F and B). RIM: those
    three for each RoSTa head plus the collaborative loss on the RIM output. Adam, lr 1e-5 as
    the paper. README.md lists every departure from the paper and the authors' code.
    A checkpoint (OUT/last.pt) is written atomically after every epoch; --resume continues
    exactly where an interrupted run stopped.

    \b
    Examples:
      gfm train --data comp --data AM-2k/train --out runs/tt --epochs 100
      gfm train --data comp --out runs/bt --rosta bt --pretrained ~/resnet34.pth
      gfm train --data comp --out runs/tt --resume          # after an interruption
      gfm train --data AM-2k/train --out runs/rim --backbone d121 --rosta rim
      gfm train --data comp --out runs/ablate --no-ppm      # Table 4 ablation
      gfm train --fg AM-2k/train --bg bg20k/train --per-fg 5 --out runs/otf   # composites made on the fly
      torchrun --standalone --nproc-per-node 4 $(which gfm) train --data comp --out runs/ddp
    """
    from gfm.model import PretrainedWeightsError
    from gfm.train import TrainConfig, pick_device, run_train

    if bool(fg_dir) != bool(bg_dir):
        _fail_usage("--fg and --bg go together")
    if crop % 32:
        _fail_usage(f"--crop {crop}: must be a multiple of 32 (the encoder halves the size five times)")
    if not data and not fg_dir:
        _fail_usage("give at least one --data folder, or --fg and --bg")
    for d in (*data, *([fg_dir, bg_dir] if fg_dir else [])):
        check_output_folder(Path(out), {"--data/--fg/--bg": Path(d)})
    check_writable(Path(out))
    route = (("fg_method", fg_method), ("denoise_p", denoise_p), ("denoise_profile", denoise_profile),
             *((("cache_dir", Path(cache_dir)),) if cache_dir else ()))
    try:  # the default batch is chosen in run_train: a resumed run keeps its checkpoint's
        pick_device(device)
    except RuntimeError as exc:
        _fail_usage(str(exc))
    cfg = _config(TrainConfig, data=tuple(data), out=out, backbone=backbone, rosta=rosta, decoder=decoder, ppm=not no_ppm,
                      bridge=not no_bridge, pretrained=pretrained, crop=crop,
                      batch_size=batch_size, epochs=epochs, photo_fgbg=photo_fgbg, cache_dir=cache_dir, lr=lr, seed=seed,
                      workers=workers, device=device,
                      amp=not no_amp, val=val, max_steps_per_epoch=max_steps_per_epoch, resume=resume,
                      fg=fg_dir, bg=bg_dir, per_fg=per_fg, route_options=route, digest_log=digest_log,
                      laplacian=laplacian, allow_val_overlap=allow_val_overlap)
    if pretrained not in ("imagenet", "none") and not Path(pretrained).is_file():
        _fail_usage(f"--pretrained {pretrained}: no such file (use imagenet, none or a .pth path)")
    if resume and overwrite:
        _fail_usage("--resume continues the run in --out, --overwrite clears it: give one of them")
    rank0 = distributed_context().is_main
    last = Path(out) / "last.pt"
    if rank0 and last.exists() and not resume and not overwrite:
        _fail_usage(f"{out} holds a training run ({last}); pass --resume to continue it, --overwrite to start "
                    "afresh (the old run is moved aside), or choose another --out")
    guard = claimed_output(Path(out), "gfm train", {}, overwrite=overwrite) if rank0 else contextlib.nullcontext()
    try:
        with guard:
            state = run_train(cfg, progress=not quiet, log=lambda m: click.echo(m, err=True))
    except PretrainedWeightsError as exc:
        _fail_usage(str(exc))
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_NOTHING_MADE)
    click.echo(f"trained {state.epoch} epochs, {state.step} steps; checkpoint {Path(out) / 'last.pt'}", err=True)


@gfm.command("pack")
@click.option("--data", "data", multiple=True, required=True, type=click.Path(exists=True, file_okay=False),
              help="Photos with mattes, `rssn compose` output or webdataset shards (any set `gfm train` reads); repeatable.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="The store folder.")
@click.option("--photo-fgbg/--no-photo-fgbg", default=True, show_default=True,
              help="Store closed-form F and B for photos (cached), as `gfm train` computes them.")
@click.option("--cache", "cache_dir", default=None, help="The rssn cache  [default: ~/.cache/gfm-toolkit]")
@click.option("--workers", default=None, type=click.IntRange(min=1), help="Decode processes  [default: all cores]")
@executor_options
@overwrite_option
@click.option("--quiet", is_flag=True)
def gfm_pack(data, out, photo_fgbg, cache_dir, workers, executor, ray_address, overwrite, quiet) -> None:
    """Pack a training set into a store that `gfm train --data STORE` crops without decoding.

    \b
    The store holds decoded planes (memory-mapped), the glance targets of every RoSTa and the
    transition pixels, computed once; a composite's matte and foreground are stored once per
    foreground. A killed pack resumes when run again; a store is readable only once complete.
    Unreadable samples are recorded by name and skipped.

    \b
    Examples:
      gfm pack --data comp --data AM-2k/train --out comp.store --workers 16
      gfm train --data comp.store --out runs/tt
    """
    from gfm.store import StoreError, pack

    for d in data:
        check_output_folder(Path(out), {"--data": Path(d)})
    check_writable(Path(out))
    settings = {"data": [str(Path(d).resolve()) for d in data], "photo_fgbg": photo_fgbg}
    with claimed_output(Path(out), "gfm pack", settings, overwrite=overwrite):
        try:
            summary = pack(list(data), out, photo_fgbg=photo_fgbg, cache_dir=cache_dir,
                           workers=workers or os.cpu_count() or 1, executor=executor, ray_address=ray_address,
                           log=(lambda m: None) if quiet else (lambda m: click.echo(m, err=True)))
        except (StoreError, ValueError, FileNotFoundError) as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(EXIT_NOTHING_MADE)
    if summary.samples == 0:
        click.echo(f"Error: no sample of {', '.join(data)} could be read", err=True)
        sys.exit(EXIT_NOTHING_MADE)


@gfm.command("predict")
@click.option("--checkpoint", "checkpoints", required=True, multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A gfm checkpoint (trained, or made by `gfm import-official`); repeat for the EN-median ensemble.")
@click.option("--input", "input_path", required=True, type=click.Path(exists=True, path_type=Path), help="An image or a folder of images.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--glance-scale", default=1 / 3, show_default="1/3", type=click.FloatRange(0, 4, min_open=True))
@click.option("--focus-scale", default=1 / 2, show_default="1/2", type=click.FloatRange(0, 4, min_open=True))
@click.option("--scale", default=None, type=click.FloatRange(0, 4, min_open=True),
              help="One pass at this scale instead (the authors' RESIZE test: 0.5).")
@click.option("--max-side", default=1600, show_default=True, type=click.IntRange(min=0),
              help="Cap the longer side of each network pass (the authors' 1600); 0 lifts the cap.")
@click.option("--rgba", is_flag=True, help="Also write RGBA cut-outs to OUT/rgba/ (straight colours, as PNG stores them).")
@click.option("--fg-method", type=click.Choice(["ml", "cf", "cf-full", "none"]), default="ml", show_default=True,
              help="Cut-out colours: the foreground F estimated under the predicted matte (ml: multi-level, fast; "
                   "cf: closed-form on the transition band; cf-full: closed-form on every pixel), or none: the "
                   "photo's own colours, which carry the old background into every semi-transparent pixel.")
@click.option("--background", default=None, metavar="COLOR|IMAGE",
              help="Also write OUT/composite/<stem>.png: the cut-out on a colour (white, black, #rrggbb, r,g,b) "
                   "or on an image scaled to cover.")
@click.option("--backbone", type=click.Choice(BACKBONE_CHOICES), default=None, help="Check the checkpoint has this backbone.")
@click.option("--rosta", type=click.Choice(ROSTA_CHOICES), default=None, help="Check the checkpoint has this RoSTa.")
@click.option("--device", default="auto", show_default=True)
@overwrite_option
@click.option("--quiet", is_flag=True)
def gfm_predict(checkpoints, input_path, out_dir, glance_scale, focus_scale, scale, max_side, rgba, fg_method,
                background, backbone, rosta, device, overwrite, quiet) -> None:
    """Predict alpha mattes (8-bit PNG at the input size) with GFM, by the authors' test protocol.

    \b
    Glance from a pass at 1/3 of the size, focus from a pass at 1/2 (each side rounded down to
    a multiple of 32, the longer side at most --max-side); RIM one pass at 1/3. Several
    --checkpoint: the pixel-wise median of their mattes (the paper's EN-median). Mattes are
    named by the input's path below --input (sub/a.jpg -> OUT/sub/a.png); two images with one
    stem in one folder are both refused. Warnings: a pass that changes the aspect ratio by
    more than 10 % (very thin images), transparent pixels in the input.

    \b
    Examples:
      gfm predict --checkpoint runs/tt/last.pt --input photos/ --out mattes/
      gfm predict --checkpoint runs/tt/last.pt --input me.jpg --out cut/ --rgba --scale 0.5
      gfm predict --checkpoint runs/tt/last.pt --input photos/ --out cut/ --rgba --background white
      gfm import-official --weights gfm_r34_tt.pth --backbone r34 --rosta tt --out r34_tt.pt
      gfm predict --checkpoint r34_tt.pt --checkpoint r34_ft.pt --checkpoint r34_bt.pt --input photos/ --out en/
    """
    from gfm.checkpoint import load_model
    from gfm.cutout import parse_background
    from gfm.predict import collect_inputs, run_predict
    from gfm.train import pick_device
    from rssn.imageio import ImageReadError, atomic_write_json, read_image

    check_output_folder(out_dir, {"--input": input_path},
                        lambda o, f: (o / f"{f.stem}.png", o / "rgba" / f"{f.stem}.png", o / "composite" / f"{f.stem}.png"))
    check_writable(out_dir)
    bg_for_predict: tuple[int, int, int] | np.ndarray | None = None  # a colour, or the image read from the file
    try:
        bg_spec = parse_background(background) if background is not None else None
        bg_for_predict = read_image(bg_spec) if isinstance(bg_spec, Path) else bg_spec
        dev = pick_device(device)
        models = [load_model(c, dev, backbone, rosta) for c in checkpoints]
    except ImageReadError as exc:
        _fail_usage(f"--background {exc.path}: {exc.reason}")
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        _fail_usage(str(exc))
    settings = {"checkpoints": [Path(c) for c in checkpoints], "glance_scale": glance_scale,
                "focus_scale": focus_scale, "scale": scale, "max_side": max_side}
    if rgba or background is not None:  # they decide the cut-outs' bytes
        settings.update(fg_method=fg_method, background=bg_spec if not isinstance(bg_spec, tuple) else list(bg_spec))
    with claimed_output(out_dir, "gfm predict", settings, overwrite=overwrite):
        res = run_predict(models, collect_inputs(input_path), out_dir, dev, rgba=rgba, fg_method=fg_method,
                          background=bg_for_predict, progress=not quiet,
                          root=input_path if input_path.is_dir() else None, glance_scale=glance_scale,
                          focus_scale=focus_scale, scale=scale, max_side=max_side or None)
        atomic_write_json(out_dir / "summary.json", {"command": "gfm predict", "settings": {**settings, "checkpoints": list(checkpoints)},
                                               "written": len(res.written), "failures": res.failures,
                                               "warnings": res.warnings,
                                               "seconds": round(res.seconds, 3), "peak_memory_mb": round(res.peak_memory_mb, 1),
                                               "device": str(dev)})
    click.echo(f"{len(res.written)} mattes written to {out_dir}, {len(res.failures)} failed, {res.seconds:.1f} s, "
               f"peak memory {res.peak_memory_mb:.0f} MiB", err=True)
    for f in res.warnings:
        click.echo(f"  warning: {f['file']}: {f['warning']}", err=True)
    for f in res.failures:
        click.echo(f"  failed: {f['file']}: {f['reason']}", err=True)
    if not res.written:
        sys.exit(EXIT_NOTHING_MADE)


@gfm.command("experiment")
@click.option("--fg", "fg_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Training foregrounds, any `rssn compose` layout (photos with mattes for the ori arm).")
@click.option("--bg", "bg_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Backgrounds (e.g. bg20k build's train/).")
@click.option("--val", "val_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Real photos with mattes to evaluate every arm on.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--arms", "arm_names", default="plain,blur,denoise,noise,rssn", show_default=True,
              help="Default arms to run (Table 4), comma-separated; add ori for the ORI-Track.")
@click.option("--arm", "extra_arms", multiple=True,
              help="NAME='rssn compose options': adds or replaces an arm, e.g. coco='--route plain --bg coco/'.")
@click.option("--repeats", default=1, show_default=True, type=click.IntRange(min=1), help="Seeds per arm (seed, seed+1, ...).")
@click.option("--per-fg", default=5, show_default=True, type=click.IntRange(min=1), help="Composites per foreground.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--backbone", type=click.Choice(BACKBONE_CHOICES), default="r34", show_default=True)
@click.option("--rosta", type=click.Choice(ROSTA_CHOICES), default="tt", show_default=True)
@click.option("--pretrained", default="imagenet", show_default=True, help="imagenet, none or a local .pth path.")
@click.option("--crop", default=320, show_default=True, type=click.IntRange(min=64))
@click.option("--batch-size", default=None, type=click.IntRange(min=1), help="[default: as gfm train]")
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=1e-5, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--max-steps-per-epoch", type=click.IntRange(min=1), default=None)
@click.option("--device", default="auto", show_default=True)
@click.option("--workers", default=None, type=click.IntRange(min=1),
              help="Compose processes, and loader processes of each arm's training  [default: all cores to "
                   "compose, gfm train's default to load]")
@click.option("--denoise-profile", type=BM3D_PROFILES, default=None, help="BM3D profile for every arm.")
@click.option("--allow-val-overlap", is_flag=True,
              help="Validate on photos that are also training foregrounds anyway; results.md lists them.")
@click.option("--allow-unequal", is_flag=True,
              help="Write the table even when arms trained on, stepped or scored different numbers of samples.")
@click.option("--cache", "cache_dir", default=None, type=click.Path(file_okay=False, path_type=Path))
@LAPLACIAN_OPTION
@click.option("--quiet", is_flag=True)
def gfm_experiment(fg_dir, bg_dir, val_dir, out_dir, arm_names, extra_arms, repeats, per_fg, seed, backbone, rosta,
                   pretrained, crop, batch_size, epochs, lr, max_steps_per_epoch, device, workers, denoise_profile,
                   cache_dir, laplacian, allow_val_overlap, allow_unequal, quiet) -> None:
    """The paper's COMP-Track and RSSN ablation on your data: compose, train, evaluate each arm.

    \b
    Arms (Table 4): plain (alpha blending only), blur, denoise, noise (one RSSN step each at
    p=0.5), rssn (all); ori trains on the foreground photos themselves. Every arm trains the
    same model with the same seed, schedule and number of samples, then the last and the best
    (validation SAD) checkpoints are scored on --val with the GFM protocol.
    Outputs: OUT/results.csv, results.md (the paper's table), results.png, experiment.json,
    and every arm's compose and run folders under OUT/arms/. A killed experiment resumes:
    run the same command again. Under torchrun each arm's training is distributed.

    \b
    Examples:
      gfm experiment --fg AM-2k/train --bg bg20k/train --val AM-2k/validation --out exp --epochs 100
      gfm experiment --fg fgs --bg bg20k/train --val real --out exp --arms plain,rssn,ori --repeats 3
      gfm experiment --fg fgs --bg bg20k/train --val real --out exp --arms rssn --arm coco='--route plain --bg coco/'
    """
    from gfm.experiment import ExperimentConfig, default_arms, parse_arm, run_experiment, with_arms
    from gfm.train import default_batch_size, pick_device

    try:
        arms = default_arms([a.strip() for a in arm_names.split(",") if a.strip()])
        for text in extra_arms:
            name, overrides = parse_arm(text)
            arms = [(n, o) for n, o in arms if n != name] + [(name, overrides)]
        dev = pick_device(device)
    except (ValueError, RuntimeError) as exc:
        _fail_usage(str(exc))
    if not arms:
        _fail_usage("no arm to run: give --arms and/or --arm")
    if crop % 32:
        _fail_usage(f"--crop {crop}: must be a multiple of 32")
    check_output_folder(out_dir, {"--fg": fg_dir, "--bg": bg_dir, "--val": val_dir})
    check_writable(out_dir)
    if batch_size is None:  # the default is recorded with the experiment, not re-derived on another device
        from rssn.outdir import read_settings

        batch_size = ((read_settings(out_dir) or {}).get("settings") or {}).get("batch_size") \
            or default_batch_size(backbone, dev.type)
    cfg = with_arms(ExperimentConfig(fg=fg_dir, bg=bg_dir, val=val_dir, out=out_dir, arms=(), repeats=repeats,
                                     per_fg=per_fg, seed=seed, compose_workers=workers or os.cpu_count() or 1,
                                     loader_workers=workers,
                                     cache_dir=cache_dir, denoise_profile=denoise_profile, backbone=backbone,
                                     rosta=rosta, pretrained=pretrained, crop=crop,
                                     batch_size=batch_size, epochs=epochs, lr=lr,
                                     max_steps_per_epoch=max_steps_per_epoch, device=device,
                                     laplacian=laplacian, allow_val_overlap=allow_val_overlap,
                                     allow_unequal=allow_unequal), arms)
    settings = {k: v for k, v in cfg.__dict__.items()
                if k not in ("compose_workers", "device", "loader_workers", "allow_val_overlap", "allow_unequal")}
    if laplacian == "textbook":  # recorded only when not the default: experiments begun before the option resume
        del settings["laplacian"]
    guard = claimed_output(out_dir, "gfm experiment", settings, may_grow=("repeats",),
                           may_change=("arms", "loader_workers")) \
        if distributed_context().is_main \
        else contextlib.nullcontext()
    try:
        with guard:
            run_experiment(cfg, log=lambda m: click.echo(m, err=True), progress=not quiet)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_NOTHING_MADE)
    if distributed_context().is_main:
        click.echo((out_dir / "results.md").read_text(), err=True)


@gfm.command("import-official")
@click.option("--weights", required=True, type=click.Path(exists=True, dir_okay=False),
              help="An official GFM checkpoint (a plain state_dict from JizhiziLi/GFM).")
@click.option("--backbone", type=click.Choice(BACKBONE_CHOICES), required=True)
@click.option("--rosta", type=click.Choice(ROSTA_CHOICES), required=True)
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The gfm checkpoint to write (for gfm predict and gfm eval --checkpoint).")
def gfm_import_official(weights, backbone, rosta, out_path) -> None:
    """Convert one of the authors' published GFM models into a gfm checkpoint.

    \b
    Every key of the file must be used: a wrong --backbone or --rosta is an error naming the
    missing and unexpected keys. The checkpoint records that the network takes RGB on the
    0-255 scale without ImageNet normalisation, as the authors' models do; gfm predict then
    follows the authors' test protocol, on CPU or CUDA.

    \b
    Examples:
      gfm import-official --weights gfm_r34_tt.pth --backbone r34 --rosta tt --out r34_tt.pt
      gfm import-official --weights gfm_d121_rim.pth --backbone d121 --rosta rim --out d121_rim.pt
    """
    from gfm.checkpoint import model_checkpoint, save_checkpoint
    from gfm.model import count_parameters
    from gfm.official import OfficialWeightsError, load_official

    try:
        model = load_official(weights, backbone, rosta)
    except (OfficialWeightsError, FileNotFoundError) as exc:
        _fail_usage(str(exc))
    check_writable(out_path.parent if str(out_path.parent) else Path("."))
    save_checkpoint(model_checkpoint(model, source={"official_weights": str(Path(weights).resolve()),
                                                    "backbone": backbone, "rosta": rosta}), out_path)
    click.echo(f"GFM {backbone}/{rosta}, {count_parameters(model):,} parameters, written to {out_path}", err=True)


@gfm.command("export")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A gfm checkpoint (trained, or made by `gfm import-official`).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The .onnx file to write; OUT.json beside it records what was written.")
@click.option("--opset", default=18, show_default=True, type=click.IntRange(18, 23), help="ONNX opset.")
def gfm_export(checkpoint, out_path, opset) -> None:
    """Export a GFM checkpoint as ONNX, for ONNX Runtime and other deployment runtimes.

    \b
    Height and width stay dynamic (any multiple of 32); the file's metadata records the backbone,
    RoSTa, input range and pass rules, so `gfm predict --checkpoint model.onnx` and
    `gfm eval --checkpoint model.onnx` need nothing else. Needs pip install -e '.[onnx]'.

    \b
    Examples:
      gfm export --checkpoint runs/tt/last.pt --out tt.onnx
      gfm import-official --weights gfm_r34_tt.pth --backbone r34 --rosta tt --out r34_tt.pt
      gfm export --checkpoint r34_tt.pt --out r34_tt.onnx
      gfm predict --checkpoint r34_tt.onnx --input photos/ --out mattes/
    """
    import hashlib
    import time

    from gfm.checkpoint import load_model
    from gfm.export import OnnxExportError, export_onnx
    from rssn.imageio import atomic_write_json

    if not out_path.name.lower().endswith(".onnx"):
        _fail_usage(f"--out {out_path}: name the file .onnx (gfm predict recognises ONNX exports by the suffix)")
    if str(checkpoint).lower().endswith(".onnx"):
        _fail_usage(f"--checkpoint {checkpoint} is already an ONNX file")
    check_writable(out_path.parent if str(out_path.parent) else Path("."))
    try:
        model = load_model(checkpoint)
    except (ValueError, FileNotFoundError) as exc:
        _fail_usage(str(exc))
    t0 = time.perf_counter()
    try:
        meta = export_onnx(model, out_path, source=str(Path(checkpoint).resolve()), opset=opset)
    except OnnxExportError as exc:
        _fail_usage(str(exc))
    seconds = time.perf_counter() - t0
    digest = hashlib.sha256(out_path.read_bytes()).hexdigest()
    atomic_write_json(Path(str(out_path) + ".json"), {"command": "gfm export", "checkpoint": str(checkpoint),
                                                   "onnx": str(out_path), "sha256": digest,
                                                   "bytes": out_path.stat().st_size, "metadata": meta,
                                                   "seconds": round(seconds, 1)})
    click.echo(f"GFM {meta['gfm_backbone']}/{meta['gfm_rosta']} exported to {out_path} (opset {opset}, "
               f"{out_path.stat().st_size / 2**20:.0f} MiB, {seconds:.0f} s); outputs {meta['gfm_outputs']}; "
               f"record in {out_path}.json", err=True)


@gfm.command("profile")
@click.option("--backbone", type=click.Choice(BACKBONE_CHOICES), default="r34", show_default=True)
@click.option("--rosta", type=click.Choice(ROSTA_CHOICES), default="tt", show_default=True)
@click.option("--size", default=800, show_default=True, type=click.IntRange(min=32), help="Input side in pixels.")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1), help="Timed forward passes.")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def gfm_profile(backbone, rosta, size, repeats, device, as_json) -> None:
    """Parameters, GMacs and seconds per image of a GFM (the paper's Table 7).

    \b
    GMacs count the multiply-accumulates of convolutions and linear layers for one
    SIZE x SIZE image; time is the median of --repeats forward passes after one warm-up,
    on the chosen device, random weights (speed does not depend on them).

    \b
    Examples:
      gfm profile                           # r34 TT, 800x800, on CUDA when present
      gfm profile --backbone d121 --rosta rim --device cpu --json
    """
    import json as _json

    from gfm.profile import profile_model
    from gfm.train import pick_device

    try:
        dev = pick_device(device)
    except RuntimeError as exc:
        _fail_usage(str(exc))
    r = profile_model(backbone, rosta, size, repeats, dev)
    if as_json:
        click.echo(_json.dumps(r))
    else:
        click.echo(_summary_table([(k, v) for k, v in r.items()]))


@gfm.command("eval")
@click.option("--pred", "pred_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Predicted mattes (paired with the ground truth by file stem).")
@click.option("--gt", "gt_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Ground-truth mattes: L, RGB (R=G=B), RGBA or 16-bit PNG.")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False),
              help="Predict with this GFM checkpoint first (gfm predict's code), then score.")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="With --checkpoint: photos with mattes (original|image + mask|alpha).")
@click.option("--pred-out", type=click.Path(file_okay=False, path_type=Path),
              help="With --checkpoint: where the predictions go  [default: a temporary folder]")
@click.option("--trimap", "trimap_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Trimaps 0/128/255 (L or palette); default: made from the ground truth.")
@click.option("--protocol", type=click.Choice(["dim", "gfm"]), default="dim", show_default=True,
              help="dim: the Deep Image Matting MATLAB code; gfm: the GFM paper's evaluator.")
@click.option("--trimap-kernel", default=25, show_default=True, type=click.IntRange(min=1),
              help="Dilation/erosion kernel for generated trimaps.")
@click.option("--out-csv", type=click.Path(dir_okay=False, path_type=Path), help="One row per image and a mean row.")
@click.option("--out-json", type=click.Path(dir_okay=False, path_type=Path), help="Means, counts and failures.")
@click.option("--error-maps", type=click.Path(file_okay=False, path_type=Path), help="Write a PNG error map per image here.")
@click.option("--allow-partial", is_flag=True,
              help="Exit 0 even when some images failed (the mean is then over the scored ones only).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def gfm_eval(pred_dir: Path | None, gt_dir: Path | None, checkpoint: str | None, data_dir: Path | None,
             pred_out: Path | None, trimap_dir: Path | None, protocol: str, trimap_kernel: int,
             out_csv: Path | None, out_json: Path | None, error_maps: Path | None, allow_partial: bool,
             quiet: bool) -> None:
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
      gfm eval --checkpoint runs/tt/last.pt --data AM-2k/validation --protocol gfm

    \b
    The summary gives the mean beside "scored N of M". When any image fails (no pair, a
    duplicate stem, a bad trimap, ...) the exit status is 1 unless --allow-partial.
    """
    import tempfile

    from gfm.evaluate import EvalConfig, run_eval, summary_table, write_csv, write_json

    inputs = {k: v for k, v in (("--pred", pred_dir), ("--gt", gt_dir), ("--data", data_dir),
                                ("--trimap", trimap_dir)) if v is not None}
    for out in (pred_out, error_maps):  # outputs never overwrite or sit among the inputs
        if out is not None:
            check_output_folder(out, inputs)
    if checkpoint is not None:
        if data_dir is None or pred_dir is not None:
            _fail_usage("--checkpoint needs --data (photos with mattes) and no --pred")
        from gfm.checkpoint import load_model
        from gfm.data import find_samples
        from gfm.predict import run_predict
        from gfm.train import file_pairs, pick_device
        from rssn.layout import LayoutError

        try:
            samples, _ = find_samples(data_dir)
        except LayoutError as exc:
            _fail_usage(str(exc))
        if not samples:
            _fail_usage(f"--data {data_dir}: no photo with a matte found")
        pairs = file_pairs(samples)
        if pairs is None:
            _fail_usage(f"--data {data_dir}: webdataset shards cannot be evaluated (ground truth is scored from "
                        "files); compose the evaluation set with --format png, or unpack the shards")
        gt_dir = gt_dir or pairs[0][1].parent
        if pred_out is not None:
            check_output_folder(pred_out, {"--gt": gt_dir})
        pred_dir = pred_out or Path(tempfile.mkdtemp(prefix="gfm-eval-"))
        dev = pick_device("auto")
        try:
            model = load_model(checkpoint, dev)
        except (ValueError, FileNotFoundError) as exc:
            _fail_usage(str(exc))
        run_predict(model, [image for image, _ in pairs], pred_dir, dev, progress=not quiet)
    if pred_dir is None or gt_dir is None:
        _fail_usage("give --pred and --gt, or --checkpoint and --data")
    cfg = _config(EvalConfig, pred_dir, gt_dir, trimap_dir, protocol, trimap_kernel, error_maps)
    result = run_eval(cfg, progress=not quiet)
    if out_csv:
        write_csv(result, out_csv)
    if out_json:
        write_json(result, out_json)
    click.echo(summary_table(result), err=True)
    if not result.rows:
        click.echo("Error: no image could be scored", err=True)
        sys.exit(EXIT_NOTHING_MADE)
    if result.failures and not allow_partial:
        click.echo(f"Error: {len(result.failures)} of {result.total} images failed, so the mean is not over the "
                   "whole set; fix them, or pass --allow-partial to accept a partial score", err=True)
        sys.exit(EXIT_NOTHING_MADE)


if __name__ == "__main__":  # pragma: no cover
    rssn()
