#!/usr/bin/env bash
# One device call's worth of waiting on vl_bg.sh: returns after $1 seconds or when it is done, and
# copies what it has so far (vl_study.sh's outputs) into this call's $OUT.
# RUN=2 polls a second pass (vl_bg.sh with RUN=2: the study resumed with more trials or time).
W=/tmp/vtune-vl; RUN=${RUN:-1}
LOG=$W/session$RUN.log; DIR=$W/out$RUN
end=$(( $(date +%s) + ${1:-540} ))
while [ "$(date +%s)" -lt $end ]; do
  grep -q "ALL DONE" "$LOG" 2>/dev/null && break
  sleep 5
done
grep -v "^\s*$" "$LOG" 2>/dev/null | tail -15
for f in "$DIR"/*.out; do echo "== $f"; tail -12 "$f"; done 2>/dev/null
for f in "$DIR"/*.err; do echo "== $f"; grep -v "^\s*$" "$f" | tail -6 | cut -c1-300; done 2>/dev/null
mkdir -p "$OUT/out$RUN"
cp -r "$DIR"/. "$OUT/out$RUN/" 2>/dev/null
cp "$LOG" "$OUT/out$RUN/" 2>/dev/null
ls -la "$OUT/out$RUN"
