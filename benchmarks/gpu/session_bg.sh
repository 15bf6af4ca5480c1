#!/usr/bin/env bash
# What issues 5 and 8 still needed on 2 x H200, as one detached job that outlives the device tool's
# 10-minute calls (start it with setsid; benchmarks/gpu/poll.sh reports and collects it call by call).
#   A. the GPU study's 8th trial: the stored study (benchmarks/results/gpu-study-2xh200/study.db) resumed;
#   B. memory-model start of the 30B+ dense shape (Qwen2.5-32B) at TP=2 on both GPUs;
#   C. the MLA shape (DeepSeek-V2-Lite, needs the MoE add-on) on GPU 1 beside one 1-GPU landscape point on GPU 0;
#   D. the GPU landscape (benchmarks/grids/gpu-llama8b-2xh200.yaml), packed, importing the study's grid points.
# Prerequisite: kit parts in /tmp/xfer (part-00, part-01, SHA256SUMS; addon-moe.tar.xz may come later).
set -u
W=/tmp/vtune-gpu; R=$W/results; S=$W/studies; STUDY=gpu-8b-chatbot
mkdir -p "$R" "$S" "$W/models" "$W/landscape"
exec > "$R/session.log" 2>&1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
source benchmarks/gpu/kit_install.sh
export PYTHONUNBUFFERED=1 MAKE_MODEL=.gpukit/make_model.py
stamp "kit installed"
MODEL=$W/models/llama-8b
[ -f "$MODEL/config.json" ] || python3 .gpukit/make_model.py "$MODEL" "$(python3 -c 'import json,sys; sys.path.insert(0,"tests"); from shapes import LLAMA_8B; print(json.dumps(LLAMA_8B))')" >/dev/null
nvidia-smi --query-gpu=index,name,memory.total,memory.used --format=csv,noheader

# A. the 8th study trial (at most one more launch: the time budget ends the study after it)
[ -f "$S/$STUDY.db" ] || cp benchmarks/results/gpu-study-2xh200/study.db "$S/$STUDY.db"
SPENT=$(python3 -c "import optuna; from vtune.study import elapsed_s; print(int(elapsed_s(optuna.load_study(study_name='$STUDY', storage='sqlite:///$S/$STUDY.db'))))")
python3 -m vtune study --study $STUDY --model "$MODEL" --workload chatbot --concurrency 256 --duration-s 12 \
    --gpus 0,1 --n-trials 9 --space benchmarks/gpu/space-8b-2gpu.yaml --remeasure 0 --timeout $((SPENT + 60)) \
    --seed 7 --report --studies-dir "$S" --configs-dir "$W/configs" -- --load-format dummy \
    > "$R/study.out" 2> "$R/study.err"
stamp "A study: rc $? $(tail -2 "$R/study.out" | tr '\n' ' ')"

# B. 32B dense at TP=2 (memory model)
OUT=$R BUDGET_S=420 python3 benchmarks/gpu/measure_memory.py 32b-tp2 > "$R/mem-32b.out" 2>&1
stamp "B 32b-tp2: $(grep '"case"' "$R/mem-32b.out" | tail -1 | cut -c1-200)"

# C. MLA on GPU 1 (after the MoE add-on arrived) beside one 1-GPU landscape point on GPU 0
LAND=(python3 benchmarks/landscape.py --grid benchmarks/grids/gpu-llama8b-2xh200.yaml --out "$R/landscape-gpu.csv"
      --runs-dir "$W/landscape" --import-study "$S/$STUDY.db")
ln -sfn "$S/$STUDY/cache" "$W/landscape/cache"   # one torch.compile cache for the study and the landscape
for _ in $(seq 120); do [ -f /tmp/xfer/addon-moe.tar.xz ] && break; sleep 2; done
source benchmarks/gpu/kit_install.sh
OUT=$R BUDGET_S=420 python3 benchmarks/gpu/measure_memory.py mla-default-g1 > "$R/mem-mla.out" 2>&1 &
MLA=$!
"${LAND[@]}" --gpus 0 --only parallel_layout=tp1-pp1-dp1 --limit 1 > "$R/landscape-1.out" 2>&1
wait $MLA
stamp "C mla: $(grep '"case"' "$R/mem-mla.out" | tail -1 | cut -c1-200); landscape point: $(tail -1 "$R/landscape-1.out")"

# D. the rest of the landscape, packed
"${LAND[@]}" --gpus 0,1 --pack > "$R/landscape-2.out" 2>&1
stamp "D landscape: rc $? $(tail -1 "$R/landscape-2.out")"
stamp "ALL DONE"
