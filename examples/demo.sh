#!/usr/bin/env bash
# `make demo`: the whole pipeline on simulated logs, end to end, as a user would run it.
# Every step prints what it wrote; the last lines compare naive and CausalRM-DR against the truth.
set -euo pipefail
OUT=${1:-demo_out}
CRM=.venv/bin/causalrm
N=${DEMO_EXPOSURES:-12000}
rm -rf "$OUT"
mkdir -p "$OUT"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "simulate $N exposures of messy production logs (alpha 0.5, rho01 0.2, rho10 0.1)"
$CRM simulate --out "$OUT/logs" --n-exposures "$N" --texts synthetic --messiness 0.3 --seed 0
step "ingest raw events into a warehouse"
$CRM ingest "$OUT/logs/events" --warehouse "$OUT/warehouse"
step "embed (prompt, response) with the offline MiniLM"
$CRM embed "$OUT/warehouse"
step "propensity fit (cross-fitted LightGBM, isotonic calibration)"
$CRM propensity fit "$OUT/warehouse"
step "noise estimate (anchor points)"
$CRM noise estimate "$OUT/warehouse"
step "weights export"
$CRM weights export "$OUT/warehouse" --out "$OUT/dataset"
step "audit"
$CRM audit "$OUT/warehouse" --out "$OUT/report.html"
for loss in naive causalrm-dr; do
  step "train $loss"
  $CRM train "$OUT/dataset" --loss "$loss" --out "$OUT/models/$loss"
  $CRM predict "$OUT/models/$loss" "$OUT/dataset" --out "$OUT/preds/$loss.parquet"
done
step "evaluate on the clean, fully observed test split (truth from the simulator)"
for loss in naive causalrm-dr; do
  $CRM evaluate "$OUT/preds/$loss.parquet" --truth "$OUT/logs/truth.parquet" --split test --out "$OUT/preds/$loss.metrics.json" > /dev/null
done
.venv/bin/python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"\n{'model':<14}{'R2 y_true':>10}{'R2 r*':>8}{'MSE':>8}{'MAE':>8}{'AUC':>7}")
for loss in ("naive", "causalrm-dr"):
    m = json.loads((out / "preds" / f"{loss}.metrics.json").read_text())
    print(f"{loss:<14}{m['r2_y_true']:>10.3f}{m['r2_r_star']:>8.3f}{m['mse_y_true']:>8.4f}{m['mae_y_true']:>8.4f}{m['auc_y_true']:>7.3f}")
report = json.loads((out / "report.json").read_text())
breaches = [g["name"] for g in report["guardrails"] if g["status"] == "breach"]
print(f"\nguardrails: {report['verdict']}" + (f" (breached: {', '.join(breaches)})" if breaches else ""))
print(f"wrote: {out}/warehouse  {out}/dataset  {out}/report.html  {out}/models  {out}/preds")
PY
