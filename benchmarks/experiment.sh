#!/usr/bin/env bash
# `gfm experiment` on the shared alphamatting photos: GT01-GT15 train, GT16-GT20 held out as the
# real validation set, over the shared backgrounds (bg20k build at 1080 px, no screening).
# Usage: bash benchmarks/experiment.sh WORK_DIR [extra gfm experiment options]
# Figures and the table are in benchmarks/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:?usage: benchmarks/experiment.sh WORK_DIR [options]}; shift || true
SHARED=${GFM_SHARED_DATA:-../shared/data}
BIN=.venv/bin
mkdir -p "$WORK/fg/image" "$WORK/fg/alpha" "$WORK/val/image" "$WORK/val/alpha"
for i in $(seq -w 1 20); do
  set_=fg; [ "$i" -gt 15 ] && set_=val
  cp -n "$SHARED/alphamatting/image/GT$i.png" "$WORK/$set_/image/"
  cp -n "$SHARED/alphamatting/alpha/GT$i.png" "$WORK/$set_/alpha/"
done
$BIN/bg20k build --src "$SHARED/backgrounds" --out "$WORK/bg" --no-screen --val-fraction 0 --quiet
time $BIN/gfm experiment --fg "$WORK/fg" --bg "$WORK/bg/train" --val "$WORK/val" --out "$WORK/exp" \
  --per-fg 2 --epochs 12 --crop 160 --batch-size 4 --lr 1e-4 --pretrained none --device cpu \
  --cache "$WORK/cache" --quiet "$@"
