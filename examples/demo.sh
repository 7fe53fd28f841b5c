#!/usr/bin/env bash
# `make demo`: the whole pipeline on simulated logs, end to end. Each step prints what it wrote.
set -euo pipefail
OUT=${1:-demo_out}
CRM=.venv/bin/causalrm
rm -rf "$OUT"
mkdir -p "$OUT"
echo "== simulate"
$CRM simulate --out "$OUT/logs" --n-exposures 20000 --texts synthetic --messiness 0.3 --seed 0
