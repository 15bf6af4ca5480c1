#!/usr/bin/env bash
# Issue 14 on one H200, as one detached job (start with setsid; benchmarks/gpu/poll.sh collects it call by call).
#   A. the README's GPU command, `python -m vtune study --model M --workload chatbot -- --load-format dummy`, on a
#      Qwen3-1.7B-shape model; bounded by N_TRIALS (default 5) for the session's 30 device-minutes;
#   B. vLLM's --enforce-eager (the users' own default) measured the same way: `vtune bench --objective capacity`;
#   C. (optional, VL=1) benchmarks/gpu/vl_study.sh, issue 15's Qwen3-VL-2B run, if it exists.
# Prerequisite: kit parts in /tmp/xfer (part-00, part-01, SHA256SUMS), make_model.py and make_vl_model.py in /tmp/xfer (copied there by the first call).
set -u
W=/tmp/vtune-gpu; R=$W/results; S=$W/studies; C=$W/configs
N_TRIALS=${N_TRIALS:-5}
mkdir -p "$R" "$S" "$C" "$W/models"
exec > "$R/session.log" 2>&1
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
source benchmarks/gpu/kit_install.sh
export PYTHONUNBUFFERED=1
stamp "kit installed"
MODEL=$W/models/qwen3-1.7b
[ -f "$MODEL/config.json" ] || python3 /tmp/xfer/make_model.py "$MODEL" \
  "$(python3 -c 'import json; from tests.shapes import QWEN3_1_7B; print(json.dumps(QWEN3_1_7B))')" >/dev/null
nvidia-smi --query-gpu=index,name,memory.total,memory.used --format=csv,noheader
python3 -c "import vllm, guidellm, optuna; print('vllm', vllm.__version__, 'optuna', optuna.__version__)"

# A. the README's GPU command (+ --load-format dummy; --n-trials for the device budget)
echo "+ python3 -m vtune study --model $MODEL --workload chatbot --n-trials $N_TRIALS --report -- --load-format dummy"
python3 -m vtune study --model "$MODEL" --workload chatbot --n-trials "$N_TRIALS" --report \
    --studies-dir "$S" --configs-dir "$C" -- --load-format dummy > "$R/study.out" 2> "$R/study.err"
stamp "A study: rc $? $(tail -3 "$R/study.out" | tr '\n' ' ')"
python3 -m vtune best --study qwen3-1.7b-chatbot --studies-dir "$S" --format json > "$R/best.json" 2>> "$R/study.err"
stamp "A best: rc $?"

# B. --enforce-eager, same workload and search
echo "+ python3 -m vtune bench --objective capacity --model $MODEL --workload chatbot --json -- --load-format dummy --enforce-eager"
python3 -m vtune bench --objective capacity --model "$MODEL" --workload chatbot --json --run-dir "$W/bench-eager" \
    -- --load-format dummy --enforce-eager > "$R/eager.json" 2> "$R/eager.err"
stamp "B eager: rc $? $(python3 -c "import json; d=json.load(open('$R/eager.json')); c=d.get('capacity') or {}; print(c.get('concurrency'), c.get('requests_per_second'))" 2>&1)"

# C. issue 15's VL run, if asked
if [ "${VL:-0}" = 1 ] && [ -f benchmarks/gpu/vl_study.sh ]; then
  OUT=$W/vl-out BUDGET_S=${VL_BUDGET_S:-300} bash benchmarks/gpu/vl_study.sh > "$R/vl.out" 2>&1
  stamp "C vl: rc $? $(tail -2 "$R/vl.out" | tr '\n' ' ')"
fi
stamp "ALL DONE"
