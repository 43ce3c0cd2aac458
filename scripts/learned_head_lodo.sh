#!/usr/bin/env bash
# Leave-one-dataset-out for the learned basis head: train on three shared datasets, evaluate on the fourth
# against the analytic bases. Usage: scripts/learned_head_lodo.sh OUT_DIR [EPOCHS] [STEPS]
set -euo pipefail
OUT=${1:?output folder}
EPOCHS=${2:-6}
STEPS=${3:-30}
DATA=${SCALE_FIELD_SHARED:-$(dirname "$0")/../../shared}/data
PY=${PYTHON:-python}
ALL=(nyu kitti_semidense sun3d_seq kitti_lidar)
mkdir -p "$OUT"
for held in "${ALL[@]}"; do
  train=()
  for d in "${ALL[@]}"; do [[ $d == "$held" ]] || train+=("$DATA/$d"); done
  $PY -m scale_field_ros.cli train --data "${train[@]}" --out "$OUT/head_wo_$held.pt" \
    --epochs "$EPOCHS" --steps "$STEPS" --no-progress 2> "$OUT/train_wo_$held.log"
  pattern=uniform; [[ $held == kitti_lidar ]] && pattern=native
  $PY -m scale_field_ros.cli eval --data "$DATA/$held" --pattern "$pattern" --anchors 10,50,200,1000 --seeds 3 \
    --noise 0.02 --methods ga_inv,field,field_learned --basis-checkpoint "$OUT/head_wo_$held.pt" \
    --json "$OUT/eval_$held.json" 2> "$OUT/eval_$held.log"
done
# Markdown table: AbsRel / RMSE per held-out dataset, anchor count and method
$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| held out | pattern | anchors | ga_inv AbsRel | field AbsRel | field_learned AbsRel | field RMSE | field_learned RMSE |")
print("|---|---|---|---|---|---|---|---|")
for f in sorted(out.glob("eval_*.json")):
    rows = json.loads(f.read_text())["rows"]
    by = {(r["anchors"], r["method"]): r for r in rows}
    for n in sorted({r["anchors"] for r in rows}):
        g = lambda m, k: by[(n, m)][k] if (n, m) in by and by[(n, m)][k] is not None else float("nan")
        print(f"| {rows[0]['dataset']} | {rows[0]['pattern']} | {n} | {g('ga_inv','absrel'):.4f} | {g('field','absrel'):.4f} "
              f"| {g('field_learned','absrel'):.4f} | {g('field','rmse'):.3f} | {g('field_learned','rmse'):.3f} |")
PY
