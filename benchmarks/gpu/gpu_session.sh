#!/usr/bin/env bash
# The GPU measurements of issue 5, on a lent machine with >= 4 GPUs (nvidia-h200-x4) or 2 (x2).
# Usage (on the device, kit parts in /tmp/xfer): bash benchmarks/gpu/gpu_session.sh PHASE
#   study : install the kit, then run the 8B study: `vtune study` on GPUs 0,1 and, with 4 GPUs,
#           a `vtune worker` on GPUs 2,3 (two 2-GPU trials at once), both stopping new trials
#           after $LANE_S seconds.
#   final : finish the study (resume), export the best config, serve the exported YAML with
#           `vllm serve --config` and measure it (vtune bench --config), and on the other GPUs
#           start the 30B+ dense shape at TP=2 and the MLA shape for the memory model.
# Everything lands in $OUT (a tarball of the study and logs plus JSON summaries).
set -u
PHASE=${1:-study}
LANE_S=${LANE_S:-300}
W=/tmp/vtune-gpu
MODEL=$W/models/llama-8b
S=$W/studies; C=$W/configs
COMMON=(--studies-dir "$S" --configs-dir "$C")
STUDY=gpu-8b-chatbot
LOAD=(--workload chatbot --concurrency 256 --duration-s 12)
FINAL_S=${FINAL_S:-330}
source benchmarks/gpu/kit_install.sh
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$W/models"
NGPU=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
[ -f "$MODEL/config.json" ] || python3 .gpukit/make_model.py "$MODEL" "$(python3 -c 'import json,sys; sys.path.insert(0,"tests"); from shapes import LLAMA_8B; print(json.dumps(LLAMA_8B))')" >/dev/null

collect() {
  (cd "$W" && find studies configs logs yaml-bench -maxdepth 5 \( -name '*.db' -o -name trial.json -o -name server.log \
      -o -name flags.txt -o -name config.yaml -o -name load_result.json -o -name '*.md' -o -name '*.png' \
      -o -name '*.csv' -o -name '*.yaml' -o -name '*.flags' -o -name '*.env' -o -name '*.log' \) \
      -not -path '*/cache/*' 2>/dev/null | tar czf "$OUT/gpu-$PHASE.tar.gz" -T -)
  python3 - "$S/$STUDY.db" > "$OUT/trials-$PHASE.json" <<'PY'
import json, sys, optuna
st = optuna.load_study(study_name="gpu-8b-chatbot", storage=f"sqlite:///{sys.argv[1]}")
rows = []
for t in st.trials:
    a = t.user_attrs
    res = a.get("result") or {}
    rows.append({"n": t.number, "state": t.state.name, "baseline": a.get("baseline"), "values": t.values,
                 "params": t.params, "flags": a.get("flags"), "gpus": a.get("gpus"), "pruned_by": a.get("pruned_by"),
                 "reason": a.get("reason"), "failure": a.get("failure"), "timings": a.get("timings"),
                 "tok_s": res.get("output_tokens_per_second"), "goodput": res.get("goodput_requests_per_second"),
                 "ttft_p90": (res.get("ttft_ms") or {}).get("p90"), "itl_p90": (res.get("itl_ms") or {}).get("p90"),
                 "startup": a.get("startup"), "prediction": a.get("prediction"), "kv_err": a.get("kv_tokens_error"),
                 "gpu_seconds_saved": a.get("gpu_seconds_saved")})
print(json.dumps({"trials": rows, "attrs": st.user_attrs}, indent=1, default=str))
PY
}

if [ "$PHASE" = study ]; then
  python3 -c "import torch; print('torch_total_bytes', [torch.cuda.mem_get_info(i)[1] for i in range(torch.cuda.device_count())])"
  nvidia-smi topo -m | head -8
  python3 -m vtune estimate --model "$MODEL" --num-gpus 2 --max-model-len 512 --gpus 0,1 2>&1 | tail -6 || true
  python3 -m vtune study --study $STUDY --model "$MODEL" "${LOAD[@]}" --gpus 0,1 --n-trials 8 \
      --space benchmarks/gpu/space-8b-2gpu.yaml --remeasure 0 --timeout "$LANE_S" --seed 7 "${COMMON[@]}" \
      -- --load-format dummy > "$OUT/study.out" 2> "$OUT/study.err" &
  SP=$!
  if [ "$NGPU" -ge 4 ]; then
    sleep 25  # the study creates the storage and enqueues the baselines first
    python3 -m vtune worker --study $STUDY --gpus 2,3 --timeout "$((LANE_S - 25))" "${COMMON[@]}" \
        > "$OUT/worker.out" 2> "$OUT/worker.err" &
    WP=$!
    wait $WP
  fi
  wait $SP
  collect
  tail -5 "$OUT/study.err"; tail -3 "$OUT/worker.err" 2>/dev/null
  exit 0
fi

# final / more: resume the study for FINAL_S more seconds of new trials (its --timeout counts time already spent)
SPENT=$(python3 -c "import optuna; from vtune.study import elapsed_s; print(int(elapsed_s(optuna.load_study(study_name='$STUDY', storage='sqlite:///$S/$STUDY.db'))))")
python3 -m vtune study --study $STUDY --model "$MODEL" "${LOAD[@]}" --gpus 0,1 --n-trials 8 \
    --space benchmarks/gpu/space-8b-2gpu.yaml --remeasure 0 --timeout $((SPENT + FINAL_S)) --seed 7 --report \
    "${COMMON[@]}" -- --load-format dummy > "$OUT/study-$PHASE.out" 2> "$OUT/study-$PHASE.err" &
SP=$!
if [ "$NGPU" -ge 4 ]; then
  mkdir -p $W/logs
  (MAKE_MODEL=.gpukit/make_model.py BUDGET_S=420 python3 benchmarks/gpu/measure_memory.py 32b-tp2-g23 mla-default-g2 \
      > "$OUT/memory.out" 2>&1; cp -r /tmp/vtune-gpu/logs $W/ 2>/dev/null) &
  MP=$!
fi
wait $SP
if [ "$PHASE" = more ]; then collect; tail -4 "$OUT/study-$PHASE.out"; exit 0; fi
python3 -m vtune bench --config "$C/$STUDY.yaml" "${LOAD[@]}" --gpus 0,1 --json --run-dir $W/yaml-bench \
    > "$OUT/yaml-bench.json" 2> "$OUT/yaml-bench.err"
[ -n "${MP:-}" ] && wait $MP
collect
tail -3 "$OUT/study-$PHASE.out"; python3 -c "import json; d=json.load(open('$OUT/yaml-bench.json')); print('yaml bench', d.get('status'), d.get('goodput_requests_per_second'), d.get('output_tokens_per_second'), d.get('failure'))"
