#!/usr/bin/env bash
# The GPU checks, run once on a lent device (see benchmarks/README.md): the CUDA EPT tests, then `medpeft speed`
# with bf16 on ViT-B/16 at 224 px (the paper's setting) and ViT-S/16 at 384 px (the CPU table's shapes, GPU batch).
# Usage: benchmarks/gpu.sh OUT_DIR   (runs from the repository root; no install needed: PYTHONPATH=.)
set -uo pipefail
out=${1:?usage: benchmarks/gpu.sh OUT_DIR}
mkdir -p "$out/vitb224" "$out/vits384"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, timm, peft; print('torch', torch.__version__, 'timm', timm.__version__, 'peft', peft.__version__)" | tee -a "$out/gpu.txt"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_ept.py -k cuda 2>&1 | tail -n 40 | tee "$out/tests.txt"
timeout 200 python3 -m medpeft.speed --device cuda --backbone vit_base_patch16_224 --img-size 224 --batch 128 \
    --memory-batch 32 --steps 10 --warmup 3 --omp-wait-policy inherit --quiet --out "$out/vitb224"
timeout 200 python3 -m medpeft.speed --device cuda --backbone vit_small_patch16_224 --img-size 384 --batch 64 \
    --memory-batch 32 --steps 10 --warmup 3 --omp-wait-policy inherit --quiet --out "$out/vits384"
