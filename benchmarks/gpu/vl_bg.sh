#!/usr/bin/env bash
# vl_study.sh as one detached job that outlives the device tool's 10-minute calls:
#   setsid nohup bash benchmarks/gpu/vl_bg.sh >/dev/null 2>&1 &
# then `bash benchmarks/gpu/poll_vl.sh SECONDS`, call by call, collects its outputs into each call's $OUT.
# RUN=2 (with e.g. N_TRIALS=5 BUDGET_S=1000) resumes the same study into out2/ after the first pass ended.
W=/tmp/vtune-vl; RUN=${RUN:-1}
mkdir -p "$W/out$RUN"
exec > "$W/session$RUN.log" 2>&1
t0=$(date +%s)
OUT=$W/out$RUN bash benchmarks/gpu/vl_study.sh
echo "[$(( $(date +%s) - t0 )) s] ALL DONE rc $?"
