#!/usr/bin/env bash
# The users' VL case (issue 15) on one lent H200 (nvidia-h200): vtune's study of a
# Qwen3-VL-2B-shape model (vtune.build_tiny_vl_model, dummy weights) under a reasoning
# workload at --max-model-len 40960, with the users' VL preset enqueued as a baseline:
#   --max-num-seqs 32 --max-num-batched-tokens 16384 --gpu-memory-utilization 0.95
# Requests carry one 640x480 image (benchmarks/gpu/vl-reasoning.yaml) when the model
# starts with images; if no image trial completes, the study is run again text only
# (the built-in `reasoning` workload, its outputs shortened by --duration-s and the
# same preset), and IMAGES=no is printed.
# Usage (on the device, kit parts already in /tmp/xfer, see ../shared/gpu/README.md):
#   bash benchmarks/gpu/vl_study.sh            # about 7-8 minutes of GPU time
# or detached with benchmarks/gpu/vl_bg.sh (polled by poll_vl.sh). The preset is enqueued after the three
# built-in baselines: a budget that ends after them leaves it unmeasured; run again with the same study name and
# a larger N_TRIALS / BUDGET_S (the timeout counts the whole study) to resume. 2026-12-01:
# benchmarks/results/vl-study-h200/ (two passes).
# Everything lands in $OUT: vl-study.out/.err, trials.json, report/, a tarball of
# trial records and server logs; the lead copies it to benchmarks/results/vl-study-h200/.
set -u
W=/tmp/vtune-vl
MODEL=$W/models/qwen3-vl-2b
S=$W/studies; C=$W/configs
STUDY=vl-reasoning-h200
BUDGET_S=${BUDGET_S:-420}          # wall time of new trials (the study stops starting trials after it)
N_TRIALS=${N_TRIALS:-4}            # a resumed study (same name) runs only the trials it still lacks
PRESET="--max-num-seqs 32 --max-num-batched-tokens 16384 --gpu-memory-utilization 0.95"
FIXED=(--load-format dummy --max-model-len 40960)
source benchmarks/gpu/kit_install.sh
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$W/models"
python3 - "$MODEL" <<'PY'
import sys
from pathlib import Path
from vtune._tiny_model import build_tiny_vl_model, check_vl_model
folder = build_tiny_vl_model(Path(sys.argv[1]), shape="qwen3-vl-2b")
problems = check_vl_model(folder)
print("vl model", folder, "problems:", problems or "none")
PY
python3 -m vtune estimate --model "$MODEL" --max-model-len 40960 2>&1 | tail -5

run_study() {  # $1 workload, $2 study name, $3 extra args
  python3 -m vtune study --study "$2" --model "$MODEL" --workload "$1" --objectives goodput --gpus 0 \
      --n-trials "$N_TRIALS" --timeout "$BUDGET_S" --remeasure 0 --seed 15 --enqueue "$PRESET" --report \
      --studies-dir "$S" --configs-dir "$C" $3 -- "${FIXED[@]}" > "$OUT/$2.out" 2> "$OUT/$2.err"
}

completed() {  # number of completed trials of study $1
  python3 -c "import optuna,sys; st=optuna.load_study(study_name='$1', storage='sqlite:///$S/$1.db'); print(sum(t.state.name=='COMPLETE' for t in st.trials))" 2>/dev/null || echo 0
}

IMAGES=yes
run_study benchmarks/gpu/vl-reasoning.yaml "$STUDY" ""
if [ "$(completed $STUDY)" = 0 ]; then
  IMAGES=no
  STUDY=$STUDY-text
  BUDGET_S=$((BUDGET_S / 2))
  run_study reasoning "$STUDY" "--duration-s 60"
fi

python3 - "$S/$STUDY.db" "$STUDY" "$IMAGES" > "$OUT/trials.json" <<'PY'
import json, sys, optuna
st = optuna.load_study(study_name=sys.argv[2], storage=f"sqlite:///{sys.argv[1]}")
rows = []
for t in st.trials:
    a = t.user_attrs
    res = a.get("result") or {}
    rows.append({"n": t.number, "state": t.state.name, "baseline": a.get("baseline"), "values": t.values,
                 "params": t.params, "flags": a.get("flags"), "failure": a.get("failure"), "timings": a.get("timings"),
                 "goodput": res.get("goodput_requests_per_second"), "tok_s": res.get("output_tokens_per_second"),
                 "ttft_p90": (res.get("ttft_ms") or {}).get("p90"), "itl_p90": (res.get("itl_ms") or {}).get("p90"),
                 "prefix_cache_hit_rate": res.get("prefix_cache_hit_rate"), "startup": a.get("startup")})
print(json.dumps({"study": sys.argv[2], "images": sys.argv[3] == "yes", "trials": rows}, indent=1, default=str))
PY
(cd "$W" && find studies configs -maxdepth 6 \( -name trial.json -o -name server.log -o -name '*.md' -o -name '*.png' \
    -o -name '*.csv' -o -name '*.yaml' -o -name '*.flags' -o -name '*.env' -o -name guidellm.log \) -not -path '*/cache/*' \
    2>/dev/null | tar czf "$OUT/vl-study.tar.gz" -T -)
mkdir -p "$OUT/report" && cp "$S/$STUDY"/*.md "$S/$STUDY"/*.csv "$S/$STUDY"/*.png "$OUT/report/" 2>/dev/null
echo "IMAGES=$IMAGES study=$STUDY"
tail -4 "$OUT/$STUDY.out"
echo "results in \$OUT: $STUDY.out/.err, trials.json, report/, vl-study.tar.gz -> copy to benchmarks/results/vl-study-h200/"
